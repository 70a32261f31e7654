//! Where a secret lives.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{InvalidValue, string_identifier};

/// Longest secret path, in bytes (SPIKE's limit).
pub const PATH_LEN_MAX: usize = 500;

/// Bytes a path may hold besides ASCII letters and digits (SPIKE's rule).
const PATH_PUNCTUATION: &[u8] = b"._-/()?+*|[]{}\\";

/// A secret's path: 1 to 500 of `a-zA-Z0-9._-/()?+*|[]{}\`, as SPIKE
/// allows. Paths are public metadata (the Raft log and the audit log carry
/// them); values are what is secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SecretPath(String);

string_identifier!(SecretPath);

impl FromStr for SecretPath {
    type Err = InvalidValue;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |rule| InvalidValue::new("secret path", rule, text);
        if text.is_empty() {
            return Err(invalid("a path is at least one character"));
        }
        if text.len() > PATH_LEN_MAX {
            return Err(invalid("a path is at most 500 bytes"));
        }
        if !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || PATH_PUNCTUATION.contains(&b))
        {
            return Err(invalid(
                "a path holds only letters, digits and ._-/()?+*|[]{}\\",
            ));
        }
        Ok(Self(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spike_paths_parse_and_others_are_refused_with_the_rule() {
        for good in [
            "a",
            "apps/db/password",
            "x.y_z-(1)?+*|[]{}\\",
            &"p".repeat(500),
        ] {
            assert_eq!(
                good.parse::<SecretPath>().map(String::from),
                Ok(good.to_owned())
            );
        }
        for bad in ["", "a b", "é", "a\nb", "a:b", &"p".repeat(501)] {
            let error = bad.parse::<SecretPath>().expect_err(bad);
            assert_eq!(error.kind, "secret path");
        }
    }

    #[test]
    fn serde_goes_through_the_constructor() {
        let path: SecretPath = serde_json::from_str("\"apps/db\"").expect("valid");
        assert_eq!(
            serde_json::to_string(&path).expect("serializes"),
            "\"apps/db\""
        );
        assert!(serde_json::from_str::<SecretPath>("\"a b\"").is_err());
    }
}
