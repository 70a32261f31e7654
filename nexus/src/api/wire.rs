//! Decoding request bodies the way Go's `encoding/json` does, so SPIKE's Go
//! clients are understood exactly: struct field names match regardless of
//! case, unknown fields are ignored, `null` means the zero value, the last
//! of duplicate keys wins, and anything after the JSON value is an error.
//! Map contents (secret values) keep their case.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::ApiError;

/// Parses `body` into `T`, whose field names are `fields` (as serialized).
pub fn parse<T: DeserializeOwned>(body: &[u8], fields: &[&str]) -> Result<T, ApiError> {
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        // Go rejects an empty body; so do we.
        return Err(ApiError::BadRequest);
    } else {
        serde_json::from_slice(body).map_err(|_| ApiError::BadRequest)?
    };
    let object = match value {
        Value::Null => Map::new(),
        Value::Object(object) => object,
        _ => return Err(ApiError::BadRequest),
    };
    let mut canonical = Map::new();
    for (key, value) in object {
        let Some(field) = fields.iter().find(|field| field.eq_ignore_ascii_case(&key)) else {
            continue;
        };
        if !value.is_null() {
            canonical.insert((*field).to_owned(), value);
        } else {
            canonical.remove(*field);
        }
    }
    serde_json::from_value(Value::Object(canonical)).map_err(|_| ApiError::BadRequest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Example {
        path: String,
        #[serde(default)]
        version: u64,
        #[serde(default)]
        spiffeid_pattern: String,
    }

    const FIELDS: &[&str] = &["path", "version", "spiffeidPattern"];

    fn example(body: &str) -> Result<Example, ApiError> {
        parse(body.as_bytes(), FIELDS)
    }

    #[test]
    fn field_names_match_without_case_and_unknown_fields_are_ignored() {
        let parsed = example(r#"{"PATH":"a/b","Version":3,"SPIFFEIDPATTERN":"x","other":1}"#)
            .expect("parses");
        assert_eq!(parsed.path, "a/b");
        assert_eq!(parsed.version, 3);
        assert_eq!(parsed.spiffeid_pattern, "x");
    }

    #[test]
    fn null_is_the_zero_value_and_the_last_duplicate_wins() {
        let parsed = example(r#"{"path":"a","version":null}"#).expect("parses");
        assert_eq!(parsed.version, 0);
        let parsed = example(r#"{"path":"a","path":"b"}"#).expect("parses");
        assert_eq!(parsed.path, "b");
    }

    #[test]
    fn bad_json_trailing_data_wrong_types_and_empty_bodies_are_refused() {
        for body in [
            "",
            "  ",
            "{",
            r#"{"path":"a"} x"#,
            r#"{"path":1}"#,
            r#"{"path":"a","version":-1}"#,
            "[]",
            "7",
        ] {
            assert!(
                matches!(example(body), Err(ApiError::BadRequest)),
                "{body:?}"
            );
        }
    }
}
