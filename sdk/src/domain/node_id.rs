//! A replica of the cluster.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::InvalidValue;

/// A replica's id: chosen by the operator, never 0, never reused after the
/// replica is removed (the cluster retires it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct NodeId(NonZeroU64);

impl NodeId {
    /// The id `id`; fails for 0.
    pub fn new(id: u64) -> Result<Self, InvalidValue> {
        NonZeroU64::new(id)
            .map(Self)
            .ok_or_else(|| InvalidValue::new("node id", "node ids start at 1", "0"))
    }

    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl TryFrom<u64> for NodeId {
    type Error = InvalidValue;

    fn try_from(id: u64) -> Result<Self, Self::Error> {
        Self::new(id)
    }
}

impl From<NodeId> for u64 {
    fn from(id: NodeId) -> u64 {
        id.get()
    }
}

impl FromStr for NodeId {
    type Err = InvalidValue;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let id: u64 = text
            .parse()
            .map_err(|_| InvalidValue::new("node id", "a node id is a whole number", text))?;
        Self::new(id)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_no_node_id() {
        assert!(NodeId::new(0).is_err());
        assert!("0".parse::<NodeId>().is_err());
        assert!("x".parse::<NodeId>().is_err());
        assert_eq!("3".parse::<NodeId>().map(NodeId::get), Ok(3));
        assert!(serde_json::from_str::<NodeId>("0").is_err());
        assert_eq!(
            serde_json::to_string(&NodeId::new(7).expect("valid")).expect("json"),
            "7"
        );
    }
}
