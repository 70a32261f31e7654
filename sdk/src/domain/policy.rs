//! Access policies: their names, their ids and what they grant.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{InvalidValue, string_identifier};
use crate::crypto::random;

/// Longest policy name (and secret value key), in bytes (SPIKE's limit).
pub const NAME_LEN_MAX: usize = 250;

/// SPIKE's name rule, shared by policy names and the keys of a secret's
/// values: 1 to 250 of `a-zA-Z0-9-_ ` (space included).
pub fn valid_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= NAME_LEN_MAX
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_ ".contains(&b))
}

/// A policy's name: unique in the cluster, chosen by the operator.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PolicyName(String);

string_identifier!(PolicyName);

impl FromStr for PolicyName {
    type Err = InvalidValue;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if valid_name(text) {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidValue::new(
                "policy name",
                "a name is 1 to 250 letters, digits, '-', '_' or spaces",
                text,
            ))
        }
    }
}

/// A policy's id: a random UUID (version 4) given when the policy is first
/// created and kept when it is replaced, as SPIKE's released clients look
/// policies up by id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PolicyId([u8; 16]);

impl PolicyId {
    /// A fresh random id.
    pub fn generate() -> Result<Self, crate::crypto::CryptoError> {
        let mut bytes: [u8; 16] = random::array()?;
        // RFC 9562: version 4 (random), variant 0b10.
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Ok(Self(bytes))
    }

    /// The id's 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The id whose bytes are `bytes`.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for PolicyId {
    /// The canonical form: 8-4-4-4-12 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, byte) in self.0.iter().enumerate() {
            if matches!(index, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PolicyId({self})")
    }
}

impl FromStr for PolicyId {
    type Err = InvalidValue;

    /// Accepts the canonical 36-character form, in either case.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid =
            || InvalidValue::new("policy id", "an id is a UUID: 8-4-4-4-12 hex digits", text);
        let bytes = text.as_bytes();
        if bytes.len() != 36 {
            return Err(invalid());
        }
        let mut id = [0u8; 16];
        let mut digits = bytes
            .iter()
            .enumerate()
            .filter(|(position, _)| !matches!(position, 8 | 13 | 18 | 23))
            .map(|(_, digit)| char::from(*digit).to_digit(16));
        if [8, 13, 18, 23].iter().any(|&dash| bytes[dash] != b'-') {
            return Err(invalid());
        }
        for byte in &mut id {
            let (Some(Some(high)), Some(Some(low))) = (digits.next(), digits.next()) else {
                return Err(invalid());
            };
            // Both are hex digits, below 16.
            *byte = u8::try_from(high * 16 + low).map_err(|_| invalid())?;
        }
        Ok(Self(id))
    }
}

impl TryFrom<String> for PolicyId {
    type Error = InvalidValue;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<PolicyId> for String {
    fn from(id: PolicyId) -> String {
        id.to_string()
    }
}

/// A policy as a client names it: by id or by name. SPIKE's released
/// clients send the id they found in the policy list; its development line
/// sends the name; both arrive in the same `id` field. A text that is a
/// UUID is looked up as an id first, then (if it is also a valid name) as a
/// name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PolicyRef {
    text: String,
    id: Option<PolicyId>,
    name: Option<PolicyName>,
}

impl PolicyRef {
    /// The id this may be, if it is a UUID.
    pub fn id(&self) -> Option<PolicyId> {
        self.id
    }

    /// The name this may be, if it follows the name rule.
    pub fn name(&self) -> Option<&PolicyName> {
        self.name.as_ref()
    }

    /// The text as the client sent it.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl From<PolicyName> for PolicyRef {
    fn from(name: PolicyName) -> Self {
        Self {
            text: name.to_string(),
            id: name.as_str().parse().ok(),
            name: Some(name),
        }
    }
}

impl From<PolicyId> for PolicyRef {
    fn from(id: PolicyId) -> Self {
        let text = id.to_string();
        Self {
            name: text.parse().ok(),
            text,
            id: Some(id),
        }
    }
}

impl FromStr for PolicyRef {
    type Err = InvalidValue;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let id = text.parse::<PolicyId>().ok();
        let name = text.parse::<PolicyName>().ok();
        if id.is_none() && name.is_none() {
            return Err(InvalidValue::new(
                "policy",
                "a policy is named by its id (a UUID) or its name (letters, digits, '-', '_', spaces)",
                text,
            ));
        }
        Ok(Self {
            text: text.to_owned(),
            id,
            name,
        })
    }
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TryFrom<String> for PolicyRef {
    type Error = InvalidValue;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<PolicyRef> for String {
    fn from(reference: PolicyRef) -> String {
        reference.text
    }
}

/// What a policy may grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Read secrets and policies.
    Read,
    /// Write secrets and policies.
    Write,
    /// List secrets and policies.
    List,
    /// Use the cipher routes.
    Execute,
    /// Everything.
    Super,
}

impl Permission {
    /// Every permission, in SPIKE's order.
    pub const ALL: [Permission; 5] = [
        Permission::Read,
        Permission::Write,
        Permission::List,
        Permission::Execute,
        Permission::Super,
    ];

    /// The permission's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::List => "list",
            Permission::Execute => "execute",
            Permission::Super => "super",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Permission {
    type Err = InvalidValue;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Permission::ALL
            .into_iter()
            .find(|permission| permission.name() == text)
            .ok_or_else(|| {
                InvalidValue::new(
                    "permission",
                    "permissions are read, write, list, execute and super",
                    text,
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_follow_spikes_rule() {
        for good in ["billing", "db readers", "a-b_c", &"n".repeat(250)] {
            assert!(good.parse::<PolicyName>().is_ok(), "{good}");
        }
        for bad in ["", "a/b", "a.b", "é", &"n".repeat(251)] {
            assert!(bad.parse::<PolicyName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn policy_ids_are_version_4_uuids_that_round_trip_in_canonical_form() {
        let id = PolicyId::generate().expect("randomness");
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text.as_bytes()[14], b'4', "version 4: {text}");
        assert!(
            matches!(text.as_bytes()[19], b'8' | b'9' | b'a' | b'b'),
            "{text}"
        );
        assert_eq!(text.parse::<PolicyId>(), Ok(id));
        assert_eq!(text.to_uppercase().parse::<PolicyId>(), Ok(id));
        assert_ne!(PolicyId::generate().expect("randomness"), id);
        let json = serde_json::to_string(&id).expect("json");
        assert_eq!(json, format!("\"{text}\""));
    }

    #[test]
    fn anything_but_a_canonical_uuid_is_no_policy_id() {
        for bad in [
            "",
            "billing",
            "0123456789abcdef0123456789abcdef",
            "01234567-89ab-cdef-0123-456789abcdeg",
            "01234567-89ab-cdef-0123_456789abcdef",
            "+1234567-89ab-cdef-0123-456789abcdef",
        ] {
            assert!(bad.parse::<PolicyId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_policy_is_referred_to_by_id_or_by_name() {
        let id = PolicyId::generate().expect("randomness");
        let by_id: PolicyRef = id.to_string().parse().expect("an id");
        assert_eq!(by_id.id(), Some(id));
        // Hex digits and dashes also follow the name rule.
        assert_eq!(
            by_id.name().map(PolicyName::as_str),
            Some(id.to_string().as_str())
        );
        let by_name: PolicyRef = "db readers".parse().expect("a name");
        assert_eq!(
            (by_name.id(), by_name.name().map(PolicyName::as_str)),
            (None, Some("db readers"))
        );
        assert!("a/b".parse::<PolicyRef>().is_err());
        assert_eq!(
            serde_json::to_string(&by_name).expect("json"),
            "\"db readers\""
        );
    }

    #[test]
    fn permissions_parse_by_their_wire_names() {
        for permission in Permission::ALL {
            assert_eq!(permission.name().parse::<Permission>(), Ok(permission));
        }
        assert!("READ".parse::<Permission>().is_err());
        assert_eq!(
            serde_json::to_string(&Permission::Execute).expect("json"),
            "\"execute\""
        );
    }
}
