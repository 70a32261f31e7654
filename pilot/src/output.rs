//! Output formats: SPIKE's `human`, `json` and `yaml`, with SPIKE's aliases.
//! JSON and YAML render the API's own answer types.

use std::fmt::Write;

use serde::Serialize;
use serde_json::Value;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Readable text (SPIKE's default).
    Human,
    /// Indented JSON.
    Json,
    /// YAML.
    Yaml,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "human" | "h" | "plain" | "p" | "" => Ok(Format::Human),
            "json" | "j" => Ok(Format::Json),
            "yaml" | "y" => Ok(Format::Yaml),
            other => Err(format!(
                "invalid format '{other}'. Valid formats are: human/h/plain/p, json/j, yaml/y"
            )),
        }
    }
}

impl Format {
    /// `value` in this format, `human` rendering it for people.
    pub fn render<T: Serialize>(self, value: &T, human: impl FnOnce(&T) -> String) -> String {
        match self {
            Format::Human => human(value),
            Format::Json => json(value),
            Format::Yaml => yaml(value),
        }
    }
}

fn to_value<T: Serialize>(value: &T) -> Value {
    // Our answer types are plain data: they always convert.
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// `value` as indented JSON with a trailing newline.
pub fn json<T: Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(&to_value(value)).unwrap_or_default();
    text.push('\n');
    text
}

/// `value` as block-style YAML (maps, lists, scalars; strings quoted when
/// YAML would read them as something else).
pub fn yaml<T: Serialize>(value: &T) -> String {
    let mut out = String::new();
    write_yaml(&mut out, &to_value(value), 0);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn write_yaml(out: &mut String, value: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if map.is_empty() => out.push_str("{}\n"),
        Value::Array(items) if items.is_empty() => out.push_str("[]\n"),
        Value::Object(map) => {
            for (key, item) in map {
                let _ = write!(out, "{pad}{}:", scalar_text(&Value::String(key.clone())));
                if is_block(item) {
                    out.push('\n');
                    write_yaml(out, item, indent + 4);
                } else {
                    let _ = writeln!(out, " {}", scalar_text(item));
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                let _ = write!(out, "{pad}-");
                if is_block(item) {
                    out.push('\n');
                    write_yaml(out, item, indent + 4);
                } else {
                    let _ = writeln!(out, " {}", scalar_text(item));
                }
            }
        }
        scalar => {
            let _ = writeln!(out, "{pad}{}", scalar_text(scalar));
        }
    }
}

fn is_block(value: &Value) -> bool {
    matches!(value, Value::Object(map) if !map.is_empty())
        || matches!(value, Value::Array(items) if !items.is_empty())
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        Value::String(text) => {
            let plain = !text.is_empty()
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./@+".contains(c))
                && !matches!(
                    text.as_str(),
                    "true" | "false" | "null" | "yes" | "no" | "~"
                )
                && text.parse::<f64>().is_err();
            if plain {
                text.clone()
            } else {
                serde_json::to_string(text).unwrap_or_default()
            }
        }
        Value::Array(_) => "[]".to_owned(),
        Value::Object(_) => "{}".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_renders_nested_maps_lists_and_quotes_ambiguous_strings() {
        let value = json!({"name": "db", "permissions": ["read", "write"], "n": 3, "t": "2025-01-02T03:04:05Z", "empty": [], "flag": "true"});
        assert_eq!(
            yaml(&value),
            "empty: []\nflag: \"true\"\nn: 3\nname: db\npermissions:\n    - read\n    - write\nt: \"2025-01-02T03:04:05Z\"\n"
        );
    }

    #[test]
    fn formats_accept_spikes_aliases() {
        assert_eq!("p".parse::<Format>(), Ok(Format::Human));
        assert_eq!("j".parse::<Format>(), Ok(Format::Json));
        assert_eq!("y".parse::<Format>(), Ok(Format::Yaml));
        assert!("xml".parse::<Format>().is_err());
    }
}
