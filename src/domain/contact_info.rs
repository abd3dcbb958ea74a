//! Email and phone values as the service stores and matches them.
//!
//! Parsing happens once, at the edge; everything past it holds an [`Email`] or a
//! [`Phone`] that is already normalised, so two spellings of one value can never
//! reach the database as different strings.

use std::fmt;

use unicode_normalization::UnicodeNormalization;

/// Longest accepted email, the limit of a forward path in RFC 5321.
const EMAIL_MAX_CHARS: usize = 254;
/// Longest accepted phone number, counting digits only.
const PHONE_MAX_DIGITS: usize = 20;

/// The request field an input error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Email,
    PhoneNumber,
    /// The request as a whole (for example: neither field given).
    Body,
}

impl Field {
    /// The field's name as clients spell it in JSON and GraphQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Email => "email",
            Field::PhoneNumber => "phoneNumber",
            Field::Body => "body",
        }
    }
}

/// Why an input was refused; the message is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InputError {
    pub field: Field,
    pub message: String,
}

impl InputError {
    pub fn new(field: Field, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// True for characters that change how text reads without being seen: controls
/// (general category Cc), formatting characters (Cf: bidi overrides and isolates,
/// zero-width spaces and joiners, the byte-order mark, soft hyphen, tags) and the
/// other default-ignorable code points (variation selectors, Hangul fillers). None
/// belongs in an email or a phone number, and each could make two values that look
/// equal differ, or one value look like another.
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{0600}'..='\u{0605}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

const PHONE_CHARACTERS: &str = "phoneNumber may contain only digits, an optional leading '+', \
     spaces, dashes, dots and parentheses";

/// A normalised email address: Unicode NFKC, trimmed and lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Email(String);

impl Email {
    /// Parses an email; `Ok(None)` when it is blank, which counts as absent.
    ///
    /// Compatibility forms are folded (NFKC): fullwidth `ＡＢＣ＠ｘ．ｉｏ` typed with an
    /// East Asian input method is `abc@x.io`, and a composed `é` equals `e` followed
    /// by a combining accent. Lower-casing follows, then NFC again, since lower-casing
    /// can leave a string unnormalised.
    pub fn parse(raw: &str) -> Result<Option<Self>, InputError> {
        // Surrounding whitespace (a pasted trailing newline) is trimmed, as ever;
        // only what is left must be free of invisible characters.
        let raw = raw.trim();
        if let Some(c) = raw.chars().find(|c| is_invisible(*c)) {
            return Err(InputError::new(
                Field::Email,
                format!(
                    "email must not contain control or invisible formatting characters \
                     (found U+{:04X})",
                    u32::from(c)
                ),
            ));
        }
        let folded: String = raw.nfkc().collect();
        let trimmed = folded.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        let invalid = |why: &str| Err(InputError::new(Field::Email, format!("email {why}")));
        let email: String = trimmed.to_lowercase().nfc().collect();
        if email.chars().count() > EMAIL_MAX_CHARS {
            return invalid(&format!("must be at most {EMAIL_MAX_CHARS} characters"));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return invalid("must not contain whitespace or control characters");
        }
        let Some((local, domain)) = email.split_once('@') else {
            return invalid("must contain an '@'");
        };
        if domain.contains('@') {
            return invalid("must contain exactly one '@'");
        }
        if local.is_empty() {
            return invalid("must have a non-empty part before the '@'");
        }
        if domain.is_empty() {
            return invalid("must have a non-empty domain after the '@'");
        }
        Ok(Some(Self(email)))
    }

    /// Wraps a value read back from the database, where it was stored normalised.
    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A normalised phone number: an optional leading `+` and 1 to 20 digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Phone(String);

impl Phone {
    /// Parses a phone number given as text; `Ok(None)` when it is blank.
    ///
    /// Separators people type (spaces, dashes, dots, parentheses) are dropped, so
    /// `"(555) 010-999"` and `"555010999"` are the same phone.
    ///
    /// Fullwidth digits (`１２３`) are folded to ASCII (NFKC), as for emails; digits of
    /// other scripts are refused.
    pub fn parse(raw: &str) -> Result<Option<Self>, InputError> {
        let raw = raw.trim();
        if let Some(c) = raw.chars().find(|c| is_invisible(*c)) {
            return Err(InputError::new(
                Field::PhoneNumber,
                format!(
                    "{PHONE_CHARACTERS} (found U+{:04X}, an invisible character)",
                    u32::from(c)
                ),
            ));
        }
        let folded: String = raw.nfkc().collect();
        let trimmed = folded.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        let (plus, rest) = match trimmed.strip_prefix('+') {
            Some(rest) => ("+", rest),
            None => ("", trimmed),
        };
        let mut digits = String::with_capacity(rest.len());
        for c in rest.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' | '.' | '(' | ')' => {}
                _ => return Err(InputError::new(Field::PhoneNumber, PHONE_CHARACTERS)),
            }
        }
        if digits.is_empty() {
            return Err(InputError::new(
                Field::PhoneNumber,
                "phoneNumber must contain at least one digit",
            ));
        }
        if digits.len() > PHONE_MAX_DIGITS {
            return Err(InputError::new(
                Field::PhoneNumber,
                format!("phoneNumber must have at most {PHONE_MAX_DIGITS} digits"),
            ));
        }
        Ok(Some(Self(format!("{plus}{digits}"))))
    }

    /// Parses a phone number given as a JSON integer, as existing REST clients send it.
    pub fn from_integer(value: u64) -> Self {
        // u64 has at most 20 digits, so every value is a valid phone.
        Self(value.to_string())
    }

    /// Wraps a value read back from the database, where it was stored normalised.
    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What one identify call asks about: at least one of the two values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifyRequest {
    email: Option<Email>,
    phone: Option<Phone>,
}

impl IdentifyRequest {
    /// Refuses a request that carries neither value.
    pub fn new(email: Option<Email>, phone: Option<Phone>) -> Result<Self, InputError> {
        if email.is_none() && phone.is_none() {
            return Err(InputError::new(
                Field::Body,
                "provide an email or a phoneNumber (or both); neither was given",
            ));
        }
        Ok(Self { email, phone })
    }

    /// Parses both raw text values and combines them.
    pub fn parse(email: Option<&str>, phone: Option<&str>) -> Result<Self, InputError> {
        let email = email.map(Email::parse).transpose()?.flatten();
        let phone = phone.map(Phone::parse).transpose()?.flatten();
        Self::new(email, phone)
    }

    pub fn email(&self) -> Option<&Email> {
        self.email.as_ref()
    }

    pub fn phone(&self) -> Option<&Phone> {
        self.phone.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(raw: &str) -> Result<Option<String>, InputError> {
        Email::parse(raw).map(|e| e.map(|e| e.as_str().to_owned()))
    }

    fn phone(raw: &str) -> Result<Option<String>, InputError> {
        Phone::parse(raw).map(|p| p.map(|p| p.as_str().to_owned()))
    }

    #[test]
    fn email_is_trimmed_and_lower_cased() {
        assert_eq!(
            email("  Lorraine@HillValley.EDU ").unwrap().as_deref(),
            Some("lorraine@hillvalley.edu")
        );
    }

    #[test]
    fn surrounding_whitespace_is_trimmed_even_control_whitespace() {
        assert_eq!(email("\ta@x.io\r\n").unwrap().as_deref(), Some("a@x.io"));
        assert_eq!(phone("\n123\t").unwrap().as_deref(), Some("123"));
    }

    #[test]
    fn blank_email_counts_as_absent() {
        assert_eq!(email("").unwrap(), None);
        assert_eq!(email("   ").unwrap(), None);
    }

    #[test]
    fn malformed_emails_are_refused_naming_the_field() {
        for raw in [
            "plainaddress",
            "@hillvalley.edu",
            "mcfly@",
            "a@b@c",
            "mc fly@hillvalley.edu",
            "mc\tfly@hillvalley.edu",
            "nul\0@x.y",
        ] {
            let err = email(raw).unwrap_err();
            assert_eq!(err.field, Field::Email, "{raw:?}");
            assert!(
                err.message.starts_with("email "),
                "{raw:?}: {}",
                err.message
            );
        }
    }

    #[test]
    fn email_length_limit_is_254_characters() {
        let ok = format!("{}@x.io", "a".repeat(249));
        assert_eq!(ok.len(), 254);
        assert!(email(&ok).unwrap().is_some());
        let too_long = format!("{}@x.io", "a".repeat(250));
        assert!(email(&too_long).is_err());
    }

    #[test]
    fn phone_separators_are_removed_and_plus_kept() {
        assert_eq!(phone(" 123456 ").unwrap().as_deref(), Some("123456"));
        assert_eq!(
            phone("+1 (555) 010-99.9").unwrap().as_deref(),
            Some("+155501099 9".replace(' ', "").as_str())
        );
        assert_eq!(Phone::from_integer(123456).as_str(), "123456");
    }

    #[test]
    fn blank_phone_counts_as_absent() {
        assert_eq!(phone("").unwrap(), None);
        assert_eq!(phone(" ").unwrap(), None);
    }

    #[test]
    fn malformed_phones_are_refused_naming_the_field() {
        for raw in ["+", "()-", "12a34", "1+2", "++12", "١٢٣", &"9".repeat(21)] {
            let err = phone(raw).unwrap_err();
            assert_eq!(err.field, Field::PhoneNumber, "{raw:?}");
            assert!(err.message.starts_with("phoneNumber "), "{raw:?}");
        }
        assert!(phone(&"9".repeat(20)).unwrap().is_some());
        assert!(phone(&format!("+{}", "9".repeat(20))).unwrap().is_some());
    }

    #[test]
    fn unicode_spellings_of_one_email_are_one_email() {
        let composed = email("ren\u{e9}@caf\u{e9}.fr").unwrap();
        let decomposed = email("rene\u{301}@cafe\u{301}.fr").unwrap();
        assert_eq!(composed, decomposed);
        assert_eq!(composed.as_deref(), Some("ren\u{e9}@caf\u{e9}.fr"));
        assert_eq!(
            email("ＬＯＲＲＡＩＮＥ＠ｈｉｌｌｖａｌｌｅｙ．ｅｄｕ")
                .unwrap()
                .as_deref(),
            Some("lorraine@hillvalley.edu")
        );
        assert_eq!(
            email("R\u{c9}N\u{c9}@X.FR").unwrap(),
            email("r\u{e9}n\u{e9}@x.fr").unwrap()
        );
        assert_eq!(phone("１２３-４５６").unwrap().as_deref(), Some("123456"));
    }

    #[test]
    fn invisible_characters_are_refused_naming_them() {
        for (raw, code) in [
            ("a\u{200B}b@x.io", "U+200B"),
            ("\u{FEFF}a@x.io", "U+FEFF"),
            ("a@x.io\u{202E}", "U+202E"),
            ("a\u{2066}b@x.io", "U+2066"),
            ("a\u{AD}b@x.io", "U+00AD"),
            ("a\u{E0041}@x.io", "U+E0041"),
        ] {
            let err = email(raw).unwrap_err();
            assert_eq!(err.field, Field::Email, "{raw:?}");
            assert!(err.message.contains(code), "{raw:?}: {}", err.message);
        }
        let err = phone("123\u{200D}456").unwrap_err();
        assert_eq!(err.field, Field::PhoneNumber);
        assert!(err.message.contains("U+200D"), "{}", err.message);
    }

    #[test]
    fn a_request_needs_at_least_one_value() {
        let err = IdentifyRequest::parse(Some(" "), None).unwrap_err();
        assert_eq!(err.field, Field::Body);
        assert!(IdentifyRequest::parse(None, Some("1")).is_ok());
    }
}
