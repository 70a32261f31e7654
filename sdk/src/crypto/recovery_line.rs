//! SPIKE's recovery-file line: `spike:<index>:<64 lowercase hex chars>`.
//!
//! `spike operator recover` writes one such line per file; `spike operator
//! restore` reads them back. Errors never echo the hex part.

use zeroize::Zeroizing;

use super::{CryptoError, KeyShare, SecretBytes, ShareIndex};

const PREFIX: &str = "spike:";

/// Formats `share` as a recovery line (no trailing newline). The result is
/// secret and wiped on drop.
pub fn format(share: &KeyShare) -> Zeroizing<String> {
    let hex = Zeroizing::new(hex::encode(share.expose_secret()));
    Zeroizing::new(format!("{PREFIX}{}:{}", share.index(), hex.as_str()))
}

/// Parses a recovery line; surrounding whitespace (a trailing newline from a
/// file or a prompt) is ignored, hex may be upper or lower case.
pub fn parse(line: &str) -> Result<KeyShare, CryptoError> {
    let invalid = |reason: &str| CryptoError::InvalidRecoveryLine(reason.to_owned());
    let body = line
        .trim()
        .strip_prefix(PREFIX)
        .ok_or_else(|| invalid("it must start with \"spike:\""))?;
    let (index, hex) = body
        .split_once(':')
        .ok_or_else(|| invalid("expected spike:<index>:<64 hex characters>"))?;
    if index.is_empty() || index.len() > 3 || !index.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("the index must be a number from 1 to 255"));
    }
    let index: u8 = index
        .parse()
        .map_err(|_| invalid("the index must be a number from 1 to 255"))?;
    let index =
        ShareIndex::new(index).map_err(|_| invalid("the index must be a number from 1 to 255"))?;
    if hex.len() != 64 {
        return Err(CryptoError::InvalidRecoveryLine(format!(
            "the share must be 64 hex characters, found {}",
            hex.len()
        )));
    }
    let mut bytes = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex, bytes.as_mut_slice())
        .map_err(|_| invalid("the share is not hexadecimal"))?;
    Ok(KeyShare::new(index, SecretBytes::from_array(&mut bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn share(index: u8, fill: u8) -> KeyShare {
        KeyShare::new(
            ShareIndex::new(index).expect("index"),
            SecretBytes::from_array(&mut [fill; 32]),
        )
    }

    #[test]
    fn formats_spikes_layout() {
        let line = format(&share(3, 0xAB));
        assert_eq!(line.as_str(), format!("spike:3:{}", "ab".repeat(32)));
    }

    #[test]
    fn accepts_surrounding_whitespace_and_upper_case() {
        let line = format!("  spike:12:{}\n", "CD".repeat(32));
        assert_eq!(parse(&line).expect("valid"), share(12, 0xCD));
    }

    #[test]
    fn rejects_malformed_lines_without_echoing_the_share() {
        let hex = "ab".repeat(32);
        let cases = [
            format!("spike:0:{hex}"),
            format!("spike:256:{hex}"),
            format!("spike:-1:{hex}"),
            format!("spike:+1:{hex}"),
            format!("spike::{hex}"),
            format!("spike:1:{}", &hex[..62]),
            format!("spike:1:{hex}00"),
            format!("spike:1:{}zz", &hex[..62]),
            format!("spoke:1:{hex}"),
            format!("spike:1{hex}"),
            String::new(),
        ];
        for case in cases {
            let error = parse(&case).expect_err(&case);
            assert!(!error.to_string().contains("abab"), "{error}");
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(index in 1u8..=255, value: [u8; 32]) {
            let original = KeyShare::new(ShareIndex::new(index).expect("non-zero"), SecretBytes::from_array(&mut value.clone()));
            prop_assert_eq!(parse(&format(&original)).expect("round trip"), original);
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in "\\PC{0,100}") {
            let _ = parse(&text);
        }
    }
}
