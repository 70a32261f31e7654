//! The domain's identifiers, parsed once at the edge: a value of one of
//! these types is valid by construction, so nothing downstream validates
//! again. Each has a fallible constructor (`FromStr`, `TryFrom<String>`)
//! and serde goes through it, so a malformed identifier cannot enter
//! through a request body, a Raft entry or a snapshot either.
//!
//! - [`SecretPath`]: where a secret lives (SPIKE's path rule).
//! - [`PolicyName`], [`PolicyId`], [`PolicyRef`] (an id or a name, as
//!   clients send it), [`Permission`]: access policies.
//! - [`NodeId`]: a replica of the cluster (never 0).
//! - [`RootKeyId`], [`DataKeyId`]: which root key and which data key
//!   (defined with the crypto core, re-exported here).

mod node_id;
mod policy;
mod secret_path;

pub use crate::crypto::{DataKeyId, key_check::RootKeyId};
pub use node_id::NodeId;
pub use policy::{NAME_LEN_MAX, Permission, PolicyId, PolicyName, PolicyRef, valid_name};
pub use secret_path::{PATH_LEN_MAX, SecretPath};

/// Longest excerpt of a refused value quoted in an error message.
const QUOTED_LEN_MAX: usize = 64;

/// A value refused by one of the domain's constructors: which kind of
/// identifier, the rule it breaks, and the start of the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {excerpt:?}: {rule}")]
pub struct InvalidValue {
    /// What was being parsed (`secret path`, `policy name`, ...).
    pub kind: &'static str,
    /// The rule the value breaks.
    pub rule: &'static str,
    /// The first characters of the value (identifiers are public, but a
    /// message stays short).
    pub excerpt: String,
}

impl InvalidValue {
    pub(crate) fn new(kind: &'static str, rule: &'static str, value: &str) -> Self {
        let mut end = value.len().min(QUOTED_LEN_MAX);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            kind,
            rule,
            excerpt: value[..end].to_owned(),
        }
    }
}

/// Implements `Display`, `AsRef<str>`, `TryFrom<String>`, `From<T> for
/// String` and `as_str` for a string newtype whose `FromStr` validates.
macro_rules! string_identifier {
    ($type:ident) => {
        impl $type {
            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $type {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $type {
            type Error = $crate::domain::InvalidValue;

            fn try_from(text: String) -> Result<Self, Self::Error> {
                text.parse()
            }
        }

        impl TryFrom<&str> for $type {
            type Error = $crate::domain::InvalidValue;

            fn try_from(text: &str) -> Result<Self, Self::Error> {
                text.parse()
            }
        }

        impl From<$type> for String {
            fn from(value: $type) -> String {
                value.0
            }
        }
    };
}
pub(crate) use string_identifier;
