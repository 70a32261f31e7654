//! The one encoding of everything Raft stores or sends: log entries, votes,
//! state records, snapshot metadata and cluster-port messages. Postcard:
//! compact, deterministic, no self-description needed (both ends are this
//! build, or a build that reads its on-disk format: see [`super::format`]).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A value that did not encode or bytes that did not decode, named.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// One of our own values did not encode (a bug: postcard refuses only
    /// what serde cannot describe, such as sequences of unknown length).
    #[error("{what} does not encode: {source}")]
    Encode {
        /// The type that was being encoded.
        what: &'static str,
        /// Postcard's reason.
        source: postcard::Error,
    },
    /// Stored or received bytes did not decode: corruption, truncation, or
    /// bytes of another format.
    #[error("{what} does not decode: {source}")]
    Decode {
        /// What the bytes were meant to be (`log entry 7`, `session`, ...).
        what: String,
        /// Postcard's reason.
        source: postcard::Error,
    },
}

impl From<CodecError> for std::io::Error {
    fn from(error: CodecError) -> Self {
        let kind = match error {
            CodecError::Encode { .. } => std::io::ErrorKind::Other,
            CodecError::Decode { .. } => std::io::ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, error)
    }
}

/// Encodes `value`.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_after(Vec::new(), value)
}

/// Encodes `value` after the bytes already in `prefix` (a format stamp).
pub fn encode_after<T: Serialize>(prefix: Vec<u8>, value: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_extend(value, prefix).map_err(|source| CodecError::Encode {
        what: std::any::type_name::<T>(),
        source,
    })
}

/// Decodes `bytes`, naming `what` on failure.
pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, CodecError> {
    postcard::from_bytes(bytes).map_err(|source| CodecError::Decode {
        what: what.to_owned(),
        source,
    })
}

/// Decodes a `T` at the start of `bytes` and returns it with the rest.
pub fn decode_prefix<'a, T: DeserializeOwned>(
    what: &str,
    bytes: &'a [u8],
) -> Result<(T, &'a [u8]), CodecError> {
    postcard::take_from_bytes(bytes).map_err(|source| CodecError::Decode {
        what: what.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decode_error_names_what_did_not_decode() {
        let error = decode::<(u64, String)>("log entry 7", &[0xff]).expect_err("garbage");
        assert!(error.to_string().starts_with("log entry 7 does not decode"));
        let io: std::io::Error = error.into();
        assert_eq!(io.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn values_round_trip_after_a_prefix() {
        let bytes = encode_after(vec![1], &(7u64, "seven".to_owned())).expect("encodes");
        let (stamp, rest): (u32, _) = decode_prefix("stamp", &bytes).expect("stamp");
        assert_eq!(stamp, 1);
        assert_eq!(
            decode::<(u64, String)>("pair", rest).expect("pair"),
            (7, "seven".to_owned())
        );
    }
}
