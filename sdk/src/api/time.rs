//! Times as Go's `time.Time` puts them in JSON: RFC 3339 with as many
//! fractional digits as needed (Go's `RFC3339Nano`), `Z` for UTC, and
//! `0001-01-01T00:00:00Z` for the zero time.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;

/// A point in time on the wire.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// Go's zero time, which SPIKE's clients print as "not set".
    pub const ZERO: Timestamp = Timestamp(datetime!(0001-01-01 00:00:00 UTC));

    /// The time `nanos` nanoseconds after the Unix epoch (the unit of the
    /// replicated log's time).
    pub fn from_unix_nanos(nanos: u64) -> Self {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).map_or(Self::ZERO, Timestamp)
    }

    /// Whether this is the zero time.
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    /// The time itself.
    pub fn as_offset_date_time(&self) -> OffsetDateTime {
        self.0
    }
}

impl Default for Timestamp {
    fn default() -> Self {
        Self::ZERO
    }
}

impl From<OffsetDateTime> for Timestamp {
    fn from(time: OffsetDateTime) -> Self {
        Self(time)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.format(&Rfc3339) {
            Ok(text) => f.write_str(&text),
            Err(_) => write!(f, "{}", self.0),
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = self.0.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    /// RFC 3339; `null` is the zero time, as Go leaves a `time.Time` that
    /// meets `null`.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            None => Ok(Self::ZERO),
            Some(text) => OffsetDateTime::parse(&text, &Rfc3339)
                .map(Timestamp)
                .map_err(|_| serde::de::Error::custom("not an RFC 3339 time")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_go_writes_them() {
        for (nanos, text) in [
            (
                1_735_787_045_123_456_789,
                "\"2025-01-02T03:04:05.123456789Z\"",
            ),
            (1_735_787_045_120_000_000, "\"2025-01-02T03:04:05.12Z\""),
            (1_735_787_045_000_000_000, "\"2025-01-02T03:04:05Z\""),
        ] {
            let time = Timestamp::from_unix_nanos(nanos);
            assert_eq!(serde_json::to_string(&time).expect("json"), text);
            assert_eq!(
                serde_json::from_str::<Timestamp>(text).expect("parses"),
                time
            );
        }
        assert_eq!(
            serde_json::to_string(&Timestamp::default()).expect("json"),
            "\"0001-01-01T00:00:00Z\""
        );
        assert!(
            serde_json::from_str::<Timestamp>("null")
                .expect("null")
                .is_zero()
        );
        assert!(serde_json::from_str::<Timestamp>("\"\"").is_err());
        assert!(serde_json::from_str::<Timestamp>("\"2025-01-02 03:04:05\"").is_err());
    }
}
