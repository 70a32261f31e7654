//! The one byte-size grammar every binary's flags use: a whole number of
//! bytes with an optional unit, `2GiB`, `512MiB`, `100MB`, `4096`. Binary
//! units (`KiB`, `MiB`, `GiB`, `TiB`) are powers of 1024, decimal ones
//! (`KB`, `MB`, `GB`, `TB`) powers of 1000; `B` or nothing is bytes.

/// Parses `text` as a byte count.
pub fn parse(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (a number of bytes, e.g. 2GiB)"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `bytes` for people: the largest binary unit it fills, one decimal.
pub fn display(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = "B";
    for next in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    if unit == "B" {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse("2GiB"), Ok(2 << 30));
        assert_eq!(parse("512 MiB"), Ok(512 << 20));
        assert_eq!(parse("100MB"), Ok(100_000_000));
        assert_eq!(parse("1B"), Ok(1));
        assert!(parse("").is_err());
        assert!(parse("2 GB/s").is_err());
        assert!(parse("-1").is_err());
        assert!(parse("99999999999TiB").is_err());
        assert_eq!(display(2 << 30), "2.0 GiB");
        assert_eq!(display(100), "100 B");
    }
}
