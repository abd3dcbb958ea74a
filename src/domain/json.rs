//! JSON parsing that refuses an object with a repeated key.
//!
//! `serde_json` keeps the last of two equal keys, so `{"email": "a@x", "email":
//! "b@y"}` would mean whatever the last parser in a chain of proxies decided; a
//! request that says two things is refused instead (RFC 8259 leaves it undefined).

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Prefix of the error message for a repeated key; the key follows in quotes.
pub const DUPLICATE_KEY: &str = "duplicate key ";

/// Parses one JSON value, refusing repeated object keys at any depth.
pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// The key a parse error says was repeated, if that is what it says.
pub fn duplicated_key(error: &serde_json::Error) -> Option<String> {
    let message = error.to_string();
    let rest = message.strip_prefix(DUPLICATE_KEY)?;
    let quoted = rest.split(" at line ").next()?;
    serde_json::from_str::<String>(quoted).ok()
}

struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        StrictValue.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut values = Vec::new();
        while let Some(value) = seq.next_element_seed(StrictValue)? {
            values.push(value);
        }
        Ok(Value::Array(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                let quoted = serde_json::to_string(&key).unwrap_or_default();
                return Err(de::Error::custom(format!("{DUPLICATE_KEY}{quoted}")));
            }
            let value = map.next_value_seed(StrictValue)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_are_refused_at_any_depth() {
        let err = from_slice(br#"{"email": "a@x.io", "email": "b@y.io"}"#).unwrap_err();
        assert_eq!(duplicated_key(&err).as_deref(), Some("email"));
        let nested = from_slice(br#"{"variables": {"input": {"a": 1, "a": 2}}}"#).unwrap_err();
        assert_eq!(duplicated_key(&nested).as_deref(), Some("a"));
        let escaped = from_slice(br#"{"\u0065mail": 1, "email": 2}"#).unwrap_err();
        assert_eq!(duplicated_key(&escaped).as_deref(), Some("email"));
    }

    #[test]
    fn everything_else_parses_as_serde_json_does() {
        for text in [
            r#"{"email": null, "phoneNumber": 123456, "x": [1, 2.5, true, {"y": "z"}]}"#,
            "[]",
            "\"text\"",
            "-1",
        ] {
            let strict = from_slice(text.as_bytes()).unwrap();
            let plain: Value = serde_json::from_str(text).unwrap();
            assert_eq!(strict, plain, "{text}");
        }
        assert!(from_slice(b"{} trailing").is_err());
        assert!(duplicated_key(&from_slice(b"{").unwrap_err()).is_none());
    }
}
