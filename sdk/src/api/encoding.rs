//! How Go's `encoding/json` writes the field types SPIKE uses, for serde:
//! `[]byte` as standard base64 (a nil slice as `null`), `[32]byte` as an
//! array of 32 numbers, and the map keys of `map[int]T` as decimal strings
//! (which serde_json already does).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// `[]byte`: base64 with padding; empty bytes are written as `null` (Go's
/// nil slice), and `null` or `""` read as empty.
pub mod base64_bytes {
    use super::*;

    /// Writes `bytes`.
    pub fn serialize<S: Serializer, B: AsRef<[u8]>>(
        bytes: &B,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let bytes = bytes.as_ref();
        if bytes.is_empty() {
            serializer.serialize_none()
        } else {
            // Named step: may be secret plaintext; the encoded copy is wiped.
            let text = Zeroizing::new(STANDARD.encode(bytes));
            serializer.serialize_str(&text)
        }
    }

    /// Reads bytes.
    pub fn deserialize<'de, D: Deserializer<'de>, B: From<Vec<u8>>>(
        deserializer: D,
    ) -> Result<B, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?.map(Zeroizing::new);
        match text {
            None => Ok(B::from(Vec::new())),
            Some(text) => STANDARD
                .decode(text.as_bytes())
                .map(B::from)
                .map_err(|_| serde::de::Error::custom("not standard base64")),
        }
    }
}

/// A 32-byte share of the root key as SPIKE carries it (`[32]byte`: a JSON
/// array of 32 numbers). Wiped on drop, never printed. Unlike Go, which
/// zero-pads a short array, a shard of any other length is refused.
#[derive(Clone, PartialEq, Eq)]
pub struct Shard(Zeroizing<[u8; 32]>);

impl Shard {
    /// Wraps `bytes`.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The 32 bytes.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Shard(redacted)")
    }
}

impl Serialize for Shard {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(32)?;
        for byte in self.0.iter() {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }
}

impl<'de> Deserialize<'de> for Shard {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(ShardVisitor)
    }
}

struct ShardVisitor;

impl<'de> Visitor<'de> for ShardVisitor {
    type Value = Shard;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of 32 numbers from 0 to 255")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Shard, A::Error> {
        let mut shard = Shard::new([0; 32]);
        for slot in shard.0.iter_mut() {
            *slot = items
                .next_element()?
                .ok_or_else(|| serde::de::Error::custom("a shard is 32 bytes"))?;
        }
        if items.next_element::<u8>()?.is_some() {
            return Err(serde::de::Error::custom("a shard is 32 bytes"));
        }
        Ok(shard)
    }
}

/// Whether `value` is its type's zero value (for Go's `omitempty`).
pub fn is_zero<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    struct Bytes {
        #[serde(with = "base64_bytes", default)]
        value: Vec<u8>,
    }

    #[test]
    fn bytes_are_base64_and_nil_is_null() {
        let written = serde_json::to_string(&Bytes {
            value: b"hello".to_vec(),
        })
        .expect("json");
        assert_eq!(written, r#"{"value":"aGVsbG8="}"#);
        assert_eq!(
            serde_json::to_string(&Bytes::default()).expect("json"),
            r#"{"value":null}"#
        );
        for (text, expected) in [
            (r#"{"value":"aGVsbG8="}"#, b"hello".to_vec()),
            (r#"{"value":""}"#, Vec::new()),
            (r#"{"value":null}"#, Vec::new()),
        ] {
            assert_eq!(
                serde_json::from_str::<Bytes>(text).expect("parses").value,
                expected
            );
        }
        assert!(serde_json::from_str::<Bytes>(r#"{"value":"aGVsbG8"}"#).is_err());
    }

    #[test]
    fn shards_are_arrays_of_exactly_32_numbers() {
        let shard = Shard::new(std::array::from_fn(|i| u8::try_from(i + 1).unwrap_or(0)));
        let text = serde_json::to_string(&shard).expect("json");
        assert!(
            text.starts_with("[1,2,3,") && text.ends_with(",32]"),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Shard>(&text).expect("parses"), shard);
        assert!(serde_json::from_str::<Shard>("[1,2,3]").is_err());
        assert!(serde_json::from_str::<Shard>(&format!("[{}]", ["1"; 33].join(","))).is_err());
        assert!(serde_json::from_str::<Shard>("\"AQID\"").is_err());
        assert_eq!(format!("{shard:?}"), "Shard(redacted)");
    }
}
