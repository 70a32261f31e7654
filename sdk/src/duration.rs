//! Durations as every binary of the project reads them: Go's
//! `time.ParseDuration` grammar, since SPIKE's own settings
//! (`SPIKE_NEXUS_KEEPER_UPDATE_INTERVAL` and friends) are Go durations.
//!
//! A duration is one or more `<number><unit>` terms, summed: `250ms`, `5s`,
//! `1m30s`, `1.5h`. Units: `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`. A bare
//! `0` is zero; any other number needs a unit. Negative durations and
//! durations past `u64::MAX` nanoseconds are refused. Use [`parse`] as a
//! clap `value_parser`.

use std::time::Duration;

/// A text that is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a duration such as 250ms, 5s, 1m30s or 2h: {reason}")]
pub struct DurationError {
    /// The text as given.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Nanoseconds per unit, longest unit names first so `ms` is not read as `m`.
const UNITS: [(&str, u128); 7] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses `text` (see the module docs).
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let fail = |reason| DurationError {
        text: text.to_owned(),
        reason,
    };
    let mut rest = text.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(fail("it is empty"));
    }
    if rest.starts_with('-') {
        return Err(fail("durations cannot be negative"));
    }
    rest = rest.strip_prefix('+').unwrap_or(rest);
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number == "." {
            return Err(fail("a number must come before each unit"));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let Some((_, unit_ns)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(if unit.is_empty() {
                fail("a unit (ns, us, ms, s, m, h) must follow each number")
            } else {
                fail("units are ns, us, ms, s, m and h")
            });
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if fraction.contains('.') {
            return Err(fail("a number has at most one decimal point"));
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| fail("the number is too large"))?
        };
        let mut term_ns = whole
            .checked_mul(*unit_ns)
            .ok_or_else(|| fail("the duration is too long"))?;
        // Each fractional digit is worth a tenth of the one before; digits
        // below a nanosecond are dropped, as Go drops them.
        let mut scale = *unit_ns;
        for digit in fraction.bytes() {
            scale /= 10;
            term_ns += u128::from(digit - b'0') * scale;
        }
        total_ns = total_ns
            .checked_add(term_ns)
            .ok_or_else(|| fail("the duration is too long"))?;
        rest = after;
    }
    let total_ns = u64::try_from(total_ns).map_err(|_| fail("the duration is too long"))?;
    Ok(Duration::from_nanos(total_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        let cases = [
            ("0", Duration::ZERO),
            ("250ms", Duration::from_millis(250)),
            ("5s", Duration::from_secs(5)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            (".5s", Duration::from_millis(500)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            (" 3s ", Duration::from_secs(3)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn everything_else_is_refused_with_the_reason() {
        for text in [
            "",
            "5",
            "s",
            "-5s",
            "5x",
            "5 s",
            "1.2.3s",
            "99999999999999999999h",
            "fast",
        ] {
            let error = parse(text).expect_err(text);
            assert_eq!(error.text, text);
        }
        assert_eq!(
            parse("30").map_err(|e| e.reason),
            Err("a unit (ns, us, ms, s, m, h) must follow each number")
        );
    }
}
