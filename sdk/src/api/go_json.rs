//! Decoding JSON the way Go's `encoding/json` decodes it into a struct, so
//! SPIKE's Go clients are understood exactly as SPIKE understands them, and
//! no list of field names is kept by hand: the names come from the target
//! type's own serde derive.
//!
//! Go's rules, as applied here:
//! - a key names a struct field whatever its case (an exact match is
//!   preferred), and unknown keys are ignored;
//! - keys are handled in document order, so of duplicate or case-variant
//!   keys the last one wins: a scalar or a slice takes the last value, a
//!   map or a struct is decoded into again, so their entries merge;
//! - `null` leaves a scalar or a struct as it was and empties a map, a
//!   slice or an optional value;
//! - a missing field keeps its zero value (target types use
//!   `#[serde(default)]`);
//! - an empty body, trailing data after the value, or a value of the wrong
//!   type is an error.
//!
//! The parsed document is held in a tree whose strings are wiped when it is
//! dropped, since request bodies carry secret values.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess,
    Visitor,
};
use serde::forward_to_deserialize_any;
use zeroize::Zeroize;

/// A body that does not decode; says only what kind of problem it is, never
/// any part of the body (which may hold secret values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body is empty or only whitespace (Go: EOF).
    #[error("the body is empty")]
    Empty,
    /// The body is not one JSON value.
    #[error("the body is not valid JSON")]
    Syntax,
    /// The JSON does not have the shape the route expects (a wrong type,
    /// a number out of range, an invalid identifier).
    #[error("the body does not have the expected fields and types")]
    Shape,
}

/// Decodes `body` into `T` by Go's rules (see the module docs).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::Empty);
    }
    let mut parser = serde_json::Deserializer::from_slice(body);
    let document = Node::deserialize_from(&mut parser).map_err(|_| DecodeError::Syntax)?;
    parser.end().map_err(|_| DecodeError::Syntax)?;
    T::deserialize(Values::one(&document)).map_err(|_: Error| DecodeError::Shape)
}

/// A JSON document as Go sees it: objects keep their keys in document
/// order, duplicates included.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Drop for Node {
    fn drop(&mut self) {
        match self {
            Node::String(text) => text.zeroize(),
            // A restore shard arrives as 32 numbers: overwrite each one (in
            // place: serde_json keeps integers inline), and keep the store
            // from being optimised away.
            Node::Number(number) => {
                *number = serde_json::Number::from(0u8);
                std::hint::black_box(number);
            }
            _ => {}
        }
    }
}

impl Node {
    fn deserialize_from<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

impl<'de> de::Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Node::deserialize_from(deserializer)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_bool<E>(self, value: bool) -> Result<Node, E> {
        Ok(Node::Bool(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Node, E> {
        Ok(Node::Number(value.into()))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Node, E> {
        Ok(Node::Number(value.into()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Node, E> {
        serde_json::Number::from_f64(value)
            .map(Node::Number)
            .ok_or_else(|| E::custom("not a finite number"))
    }

    fn visit_str<E>(self, value: &str) -> Result<Node, E> {
        Ok(Node::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Node, E> {
        Ok(Node::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Node, A::Error> {
        let mut array = Vec::new();
        while let Some(item) = items.next_element()? {
            array.push(item);
        }
        Ok(Node::Array(array))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Node, A::Error> {
        let mut object = Vec::new();
        while let Some(entry) = entries.next_entry::<String, Node>()? {
            object.push(entry);
        }
        Ok(Node::Object(object))
    }
}

/// The decoding error; deliberately without the message serde builds,
/// which can quote the offending value.
#[derive(Debug)]
struct Error;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the JSON does not fit the expected type")
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Error
    }
}

/// Every value a document gave one place (a struct field named several
/// times, or a single value), decoded the way Go decodes them one after
/// the other into the same variable.
struct Values<'a>(Vec<&'a Node>);

/// A `null`, for the zero value of a place that got no usable value.
static NULL: Node = Node::Null;

impl<'a> Values<'a> {
    fn one(node: &'a Node) -> Self {
        Self(vec![node])
    }

    /// The value that decides a scalar: the last that is not `null`.
    fn last_set(&self) -> &'a Node {
        self.0
            .iter()
            .rev()
            .find(|node| !matches!(node, Node::Null))
            .copied()
            .unwrap_or(&NULL)
    }

    /// The values after the last `null`, which resets a map or pointer.
    fn since_reset(&self) -> &[&'a Node] {
        let start = self
            .0
            .iter()
            .rposition(|node| matches!(node, Node::Null))
            .map_or(0, |reset| reset + 1);
        &self.0[start..]
    }

    /// Every entry of the objects among `nodes`, in order; an error if one
    /// of them is neither an object nor `null`.
    fn entries(nodes: &[&'a Node]) -> Result<Vec<(&'a str, &'a Node)>, Error> {
        let mut entries = Vec::new();
        for node in nodes {
            match node {
                Node::Object(object) => {
                    entries.extend(object.iter().map(|(key, value)| (key.as_str(), value)));
                }
                Node::Null => {}
                _ => return Err(Error),
            }
        }
        Ok(entries)
    }
}

/// Whether a document key names `field`: equal under Unicode simple case
/// folding, as Go compares them.
fn names_field(key: &str, field: &str) -> bool {
    key.chars().count() == field.chars().count()
        && key.chars().zip(field.chars()).all(|(a, b)| {
            a == b || a.to_lowercase().eq(b.to_lowercase()) || a.to_uppercase().eq(b.to_uppercase())
        })
}

impl<'de> Deserializer<'de> for Values<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0.last().copied().unwrap_or(&NULL) {
            Node::Null => visitor.visit_unit(),
            Node::Bool(value) => visitor.visit_bool(*value),
            Node::Number(number) => {
                if let Some(value) = number.as_u64() {
                    visitor.visit_u64(value)
                } else if let Some(value) = number.as_i64() {
                    visitor.visit_i64(value)
                } else {
                    visitor.visit_f64(number.as_f64().ok_or(Error)?)
                }
            }
            Node::String(text) => visitor.visit_borrowed_str(text),
            Node::Array(items) => visitor.visit_seq(Items(items.iter())),
            Node::Object(object) => visitor.visit_map(Entries {
                entries: object
                    .iter()
                    .map(|(key, value)| (key.as_str(), value))
                    .collect(),
                next: 0,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let live = self.since_reset();
        if live.is_empty() {
            visitor.visit_none()
        } else {
            visitor.visit_some(Values(live.to_vec()))
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0.last().copied().unwrap_or(&NULL) {
            Node::Null => visitor.visit_seq(Items([].iter())),
            Node::Array(items) => visitor.visit_seq(Items(items.iter())),
            _ => Err(Error),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let entries = Values::entries(self.since_reset())?;
        visitor.visit_map(Entries { entries, next: 0 })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        // Group the document's entries by the field they name, in order.
        let mut named: Vec<(&'static str, Vec<&'de Node>)> = Vec::new();
        for (key, value) in Values::entries(&self.0)? {
            let field = fields
                .iter()
                .find(|field| **field == key)
                .or_else(|| fields.iter().find(|field| names_field(key, field)));
            let Some(field) = field else {
                continue;
            };
            match named.iter_mut().find(|(name, _)| name == field) {
                Some((_, values)) => values.push(value),
                None => named.push((field, vec![value])),
            }
        }
        visitor.visit_map(Fields {
            fields: named.into_iter(),
            pending: None,
        })
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.last_set() {
            Node::String(text) => {
                visitor.visit_enum(IntoDeserializer::<Error>::into_deserializer(text.as_str()))
            }
            Node::Null => visitor.visit_enum(IntoDeserializer::<Error>::into_deserializer("")),
            _ => Err(Error),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    /// Scalars: the last value that is not `null`; without one, the zero
    /// value Go leaves in place.
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.last_set() {
            Node::Null => visitor.visit_bool(false),
            Node::Bool(value) => visitor.visit_bool(*value),
            _ => Err(Error),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.last_set() {
            Node::Null => visitor.visit_borrowed_str(""),
            Node::String(text) => visitor.visit_borrowed_str(text),
            _ => Err(Error),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        number(self.last_set(), visitor)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        number(self.last_set(), visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.last_set() {
            Node::Null => visitor.visit_f64(0.0),
            Node::Number(number) => visitor.visit_f64(number.as_f64().ok_or(Error)?),
            _ => Err(Error),
        }
    }

    forward_to_deserialize_any! { bytes byte_buf }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        number(self.last_set(), visitor)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        number(self.last_set(), visitor)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        number(self.last_set(), visitor)
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        number(self.last_set(), visitor)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        number(self.last_set(), visitor)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        number(self.last_set(), visitor)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }
}

/// An integer: Go refuses fractions and exponents in an integer field, and
/// so does serde's integer visitor when it gets an `f64`; range checks are
/// the visitor's.
fn number<'de, V: Visitor<'de>>(node: &Node, visitor: V) -> Result<V::Value, Error> {
    match node {
        Node::Null => visitor.visit_u64(0),
        Node::Number(number) => match (number.as_u64(), number.as_i64()) {
            (Some(value), _) => visitor.visit_u64(value),
            (None, Some(value)) => visitor.visit_i64(value),
            (None, None) => Err(Error),
        },
        _ => Err(Error),
    }
}

/// The items of an array.
struct Items<'a>(std::slice::Iter<'a, Node>);

impl<'de> SeqAccess<'de> for Items<'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0
            .next()
            .map(|item| seed.deserialize(Values::one(item)))
            .transpose()
    }
}

/// The entries of a map, in document order; a later duplicate key simply
/// overwrites an earlier one when the map is built, as in Go.
struct Entries<'a> {
    entries: Vec<(&'a str, &'a Node)>,
    next: usize,
}

impl<'de> MapAccess<'de> for Entries<'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, _)) = self.entries.get(self.next) else {
            return Ok(None);
        };
        seed.deserialize(Key(key)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let (_, value) = self.entries.get(self.next).ok_or(Error)?;
        self.next += 1;
        seed.deserialize(Values::one(value))
    }
}

/// A map key: text, or for an integer-keyed map (Go's `map[int]T`) a
/// decimal number written as text.
struct Key<'a>(&'a str);

macro_rules! integer_key {
    ($($method:ident: $type:ty => $visit:ident,)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.$visit(self.0.parse::<$type>().map_err(|_| Error)?.into())
        })*
    };
}

impl<'de> Deserializer<'de> for Key<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.0)
    }

    integer_key! {
        deserialize_u8: u8 => visit_u64,
        deserialize_u16: u16 => visit_u64,
        deserialize_u32: u32 => visit_u64,
        deserialize_u64: u64 => visit_u64,
        deserialize_i8: i8 => visit_i64,
        deserialize_i16: i16 => visit_i64,
        deserialize_i32: i32 => visit_i64,
        deserialize_i64: i64 => visit_i64,
    }

    forward_to_deserialize_any! {
        bool f32 f64 char str string bytes byte_buf option unit unit_struct
        newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

/// The fields of a struct, each with every value the document gave it.
struct Fields<'a> {
    fields: std::vec::IntoIter<(&'static str, Vec<&'a Node>)>,
    pending: Option<Vec<&'a Node>>,
}

impl<'de> MapAccess<'de> for Fields<'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((field, values)) = self.fields.next() else {
            return Ok(None);
        };
        self.pending = Some(values);
        seed.deserialize(IntoDeserializer::<Error>::into_deserializer(field))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let values = self.pending.take().ok_or(Error)?;
        seed.deserialize(Values(values))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, rename_all = "camelCase")]
    struct Example {
        path: String,
        version: i64,
        spiffeid_pattern: String,
        values: BTreeMap<String, String>,
        versions: Vec<u64>,
        cas: Option<u64>,
        inner: Inner,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Inner {
        a: u8,
        b: u8,
    }

    fn example(body: &str) -> Result<Example, DecodeError> {
        decode(body.as_bytes())
    }

    #[test]
    fn field_names_match_whatever_their_case_and_unknown_fields_are_ignored() {
        let parsed =
            example(r#"{"PATH":"a/b","Version":3,"SPIFFEIDPATTERN":"x","other":[1,{"y":2}]}"#)
                .expect("decodes");
        assert_eq!(parsed.path, "a/b");
        assert_eq!(parsed.version, 3);
        assert_eq!(parsed.spiffeid_pattern, "x");
        // Go folds Unicode case: the Kelvin sign is a k, the long s an s.
        let folded = example("{\"\u{17f}piffeidPattern\":\"y\"}").expect("decodes");
        assert_eq!(folded.spiffeid_pattern, "y");
    }

    #[test]
    fn of_duplicate_and_case_variant_keys_the_last_wins_in_document_order() {
        assert_eq!(
            example(r#"{"path":"a","path":"b"}"#).expect("decodes").path,
            "b"
        );
        assert_eq!(
            example(r#"{"path":"a","PATH":"b"}"#).expect("decodes").path,
            "b"
        );
        assert_eq!(
            example(r#"{"PATH":"a","path":"b"}"#).expect("decodes").path,
            "b"
        );
        assert_eq!(
            example(r#"{"versions":[1,2],"Versions":[3]}"#)
                .expect("decodes")
                .versions,
            vec![3]
        );
    }

    #[test]
    fn null_keeps_scalars_and_structs_and_empties_maps_slices_and_options() {
        let parsed = example(
            r#"{"path":"a","path":null,"version":null,"values":{"k":"v"},"values":null,
                "versions":[1],"versions":null,"cas":7,"cas":null,"inner":{"a":1},"inner":null}"#,
        )
        .expect("decodes");
        assert_eq!(parsed.path, "a");
        assert_eq!(parsed.version, 0);
        assert!(parsed.values.is_empty());
        assert!(parsed.versions.is_empty());
        assert_eq!(parsed.cas, None);
        assert_eq!(parsed.inner, Inner { a: 1, b: 0 });
        assert_eq!(example("null").expect("decodes"), Example::default());
        // A null value inside a map is the element's zero value.
        let parsed = example(r#"{"values":{"k":null}}"#).expect("decodes");
        assert_eq!(parsed.values.get("k").map(String::as_str), Some(""));
    }

    #[test]
    fn maps_and_structs_named_twice_merge_as_go_decodes_into_them_again() {
        let parsed = example(
            r#"{"values":{"a":"1","b":"2"},"values":{"b":"3"},"inner":{"a":1},"inner":{"b":2}}"#,
        )
        .expect("decodes");
        assert_eq!(
            parsed.values,
            BTreeMap::from([("a".into(), "1".into()), ("b".into(), "3".into())])
        );
        assert_eq!(parsed.inner, Inner { a: 1, b: 2 });
        // Map keys keep their case: they are data, not field names.
        let parsed = example(r#"{"values":{"Key":"1","key":"2"}}"#).expect("decodes");
        assert_eq!(parsed.values.len(), 2);
    }

    #[test]
    fn integer_map_keys_are_decimal_text() {
        let parsed: BTreeMap<u8, String> = decode(br#"{"1":"a","02":"b"}"#).expect("decodes");
        assert_eq!(parsed, BTreeMap::from([(1, "a".into()), (2, "b".into())]));
        assert_eq!(
            decode::<BTreeMap<u8, String>>(br#"{"x":"a"}"#),
            Err(DecodeError::Shape)
        );
    }

    #[test]
    fn bad_json_trailing_data_wrong_types_and_empty_bodies_are_refused() {
        for (body, expected) in [
            ("", DecodeError::Empty),
            ("  \n", DecodeError::Empty),
            ("{", DecodeError::Syntax),
            (r#"{"path":"a"} x"#, DecodeError::Syntax),
            (r#"{"path":1}"#, DecodeError::Shape),
            (r#"{"version":1.5}"#, DecodeError::Shape),
            (r#"{"version":1e2}"#, DecodeError::Shape),
            (r#"{"versions":[-1]}"#, DecodeError::Shape),
            (r#"{"inner":{"a":256}}"#, DecodeError::Shape),
            (r#"{"values":{"k":1}}"#, DecodeError::Shape),
            ("[]", DecodeError::Shape),
            ("7", DecodeError::Shape),
        ] {
            assert_eq!(example(body), Err(expected), "{body:?}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!(
            "{{\"inner\":{}1{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(example(&deep), Err(DecodeError::Syntax));
    }
}
