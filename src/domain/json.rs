//! Orders as JSON: parsing that refuses an object with a repeated key, and the
//! identify body's fields (`email`, `phoneNumber`), shared by REST, batches and the
//! import.
//!
//! `serde_json` keeps the last of two equal keys, so `{"email": "a@x", "email":
//! "b@y"}` would mean whatever the last parser in a chain of proxies decided; a
//! request that says two things is refused instead (RFC 8259 leaves it undefined).

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::{Email, Field, IdentifyRequest, InputError, Phone};

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

/// Parses `{"email"?: string|null, "phoneNumber"?: string|integer|null}`; other
/// fields are ignored.
pub fn parse_body(body: &[u8]) -> Result<IdentifyRequest, InputError> {
    let value = from_slice(body).map_err(|err| match duplicated_key(&err).as_deref() {
        Some(key @ ("email" | "phoneNumber")) => InputError::new(
            if key == "email" {
                Field::Email
            } else {
                Field::PhoneNumber
            },
            format!("{key} is given more than once; send each field once"),
        ),
        _ => InputError::new(
            Field::Body,
            format!("request body is not valid JSON: {err}"),
        ),
    })?;
    let Value::Object(fields) = value else {
        return Err(InputError::new(
            Field::Body,
            format!(
                "request body must be a JSON object, got {}",
                json_kind(&value)
            ),
        ));
    };
    parse_fields(&fields)
}

/// An order's fields: `email` and `phoneNumber`, each possibly absent or null;
/// other fields are ignored.
pub fn parse_fields(
    fields: &serde_json::Map<String, Value>,
) -> Result<IdentifyRequest, InputError> {
    let email = match fields.get("email") {
        None | Some(Value::Null) => None,
        Some(Value::String(raw)) => Email::parse(raw)?,
        Some(other) => {
            return Err(InputError::new(
                Field::Email,
                format!("email must be a string or null, got {}", json_kind(other)),
            ));
        }
    };
    let phone = match fields.get("phoneNumber") {
        None | Some(Value::Null) => None,
        Some(Value::String(raw)) => Phone::parse(raw)?,
        Some(Value::Number(number)) => match number.as_u64() {
            Some(value) => Some(Phone::from_integer(value)),
            None => {
                return Err(InputError::new(
                    Field::PhoneNumber,
                    "phoneNumber given as a number must be a non-negative integer",
                ));
            }
        },
        Some(other) => {
            return Err(InputError::new(
                Field::PhoneNumber,
                format!(
                    "phoneNumber must be a string, a non-negative integer or null, got {}",
                    json_kind(other)
                ),
            ));
        }
    };
    IdentifyRequest::new(email, phone)
}

pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod body_tests {
    use super::*;

    fn field_of(body: &str) -> Field {
        parse_body(body.as_bytes()).unwrap_err().field
    }

    #[test]
    fn phone_as_integer_or_string_is_the_same_phone() {
        let a = parse_body(br#"{"phoneNumber": 123456}"#).unwrap();
        let b = parse_body(br#"{"phoneNumber": "123456"}"#).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn wrong_types_name_the_field() {
        assert_eq!(field_of(r#"{"email": 5}"#), Field::Email);
        assert_eq!(field_of(r#"{"email": true}"#), Field::Email);
        assert_eq!(field_of(r#"{"email": ["a@b"]}"#), Field::Email);
        assert_eq!(field_of(r#"{"phoneNumber": -1}"#), Field::PhoneNumber);
        assert_eq!(field_of(r#"{"phoneNumber": 1.5}"#), Field::PhoneNumber);
        assert_eq!(field_of(r#"{"phoneNumber": 1e400}"#), Field::Body);
        assert_eq!(field_of(r#"{"phoneNumber": {}}"#), Field::PhoneNumber);
        assert_eq!(field_of(r#"[]"#), Field::Body);
        assert_eq!(field_of(r#"{"#), Field::Body);
        assert_eq!(
            field_of(r#"{"email": null, "phoneNumber": ""}"#),
            Field::Body
        );
    }

    #[test]
    fn repeated_fields_are_refused_not_last_wins() {
        assert_eq!(
            field_of(r#"{"email": "a@b.c", "email": "d@e.f"}"#),
            Field::Email
        );
        assert_eq!(
            field_of(r#"{"phoneNumber": "1", "phoneNumber": 2}"#),
            Field::PhoneNumber
        );
        assert_eq!(
            field_of(r#"{"x": 1, "x": 1, "email": "a@b.c"}"#),
            Field::Body
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert!(parse_body(br#"{"email": "a@b.c", "extra": [1, 2]}"#).is_ok());
    }
}
