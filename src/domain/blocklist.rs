//! Values that never link anything (docs/SPEC.md §10.3): the built-in list, the
//! operator's file, and the exact values administrators blocked in the database.

use std::collections::HashSet;
use std::fmt;

use super::{Email, IdentifyRequest, Phone};

/// A blocked email or phone, exact.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContactValue {
    Email(Email),
    Phone(Phone),
}

impl ContactValue {
    pub fn kind(&self) -> &'static str {
        match self {
            ContactValue::Email(_) => "email",
            ContactValue::Phone(_) => "phone",
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ContactValue::Email(email) => email.as_str(),
            ContactValue::Phone(phone) => phone.as_str(),
        }
    }

    pub fn email(&self) -> Option<&Email> {
        match self {
            ContactValue::Email(email) => Some(email),
            ContactValue::Phone(_) => None,
        }
    }

    pub fn phone(&self) -> Option<&Phone> {
        match self {
            ContactValue::Phone(phone) => Some(phone),
            ContactValue::Email(_) => None,
        }
    }

    /// Rebuilds a value read back from `blocked_values` or a held record.
    pub fn from_stored(kind: &str, value: String) -> Option<Self> {
        match kind {
            "email" => Some(ContactValue::Email(Email::from_stored(value))),
            "phone" => Some(ContactValue::Phone(Phone::from_stored(value))),
            _ => None,
        }
    }
}

/// The rules from configuration: fixed for the life of the process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockRules {
    emails: HashSet<Email>,
    /// Domains, lower-cased, without the `@`.
    email_domains: HashSet<String>,
    phones: HashSet<Phone>,
    /// Phones made of one digit repeated at least this many times.
    repeated_digit_min: Option<usize>,
}

/// The built-in list: values typed when a customer has none to give. Conservative
/// on purpose: every entry is something no real customer owns.
const DEFAULT_RULES: &str = "\
repeated-digit:6
1234567890
0123456789
123456789
test@test.com
test@example.com
noemail@noemail.com
none@none.com
no@email.com
na@na.com
";

/// A line of a blocked-values file that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RuleError {
    pub line: usize,
    pub message: String,
}

impl BlockRules {
    /// The built-in list of docs/SPEC.md §10.3.
    pub fn defaults() -> Self {
        Self::parse(DEFAULT_RULES).expect("the built-in list parses")
    }

    /// Reads the file format: one entry per line, `#` starts a comment.
    pub fn parse(text: &str) -> Result<Self, RuleError> {
        let mut rules = Self::default();
        for (index, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or_default().trim();
            if entry.is_empty() {
                continue;
            }
            rules.add(entry).map_err(|message| RuleError {
                line: index + 1,
                message,
            })?;
        }
        Ok(rules)
    }

    fn add(&mut self, entry: &str) -> Result<(), String> {
        if let Some(count) = entry.strip_prefix("repeated-digit:") {
            let count: usize = count
                .trim()
                .parse()
                .ok()
                .filter(|count| (2..=20).contains(count))
                .ok_or("repeated-digit:N needs a whole N from 2 to 20")?;
            self.repeated_digit_min = Some(self.repeated_digit_min.map_or(count, |n| n.min(count)));
        } else if let Some(domain) = entry.strip_prefix("*@") {
            // Normalised through the email parser so the domain compares as stored.
            let email = Email::parse(&format!("x@{domain}"))
                .map_err(|err| format!("`{entry}`: {err}"))?
                .ok_or("an empty domain")?;
            let (_, domain) = email.as_str().split_once('@').ok_or("no domain")?;
            self.email_domains.insert(domain.to_owned());
        } else if entry.contains('@') {
            let email = Email::parse(entry)
                .map_err(|err| format!("`{entry}`: {err}"))?
                .ok_or("an empty email")?;
            self.emails.insert(email);
        } else {
            let phone = Phone::parse(entry)
                .map_err(|err| format!("`{entry}` is neither an email nor a phone: {err}"))?
                .ok_or("an empty phone")?;
            self.phones.insert(phone);
        }
        Ok(())
    }

    /// Adds every rule of `other`.
    pub fn extend(&mut self, other: BlockRules) {
        self.emails.extend(other.emails);
        self.email_domains.extend(other.email_domains);
        self.phones.extend(other.phones);
        if let Some(count) = other.repeated_digit_min {
            self.repeated_digit_min = Some(self.repeated_digit_min.map_or(count, |n| n.min(count)));
        }
    }

    pub fn blocks_email(&self, email: &Email) -> bool {
        self.emails.contains(email)
            || email
                .as_str()
                .rsplit_once('@')
                .is_some_and(|(_, domain)| self.email_domains.contains(domain))
    }

    pub fn blocks_phone(&self, phone: &Phone) -> bool {
        if self.phones.contains(phone) {
            return true;
        }
        let digits = phone.as_str().trim_start_matches('+').as_bytes();
        self.repeated_digit_min.is_some_and(|min| {
            digits.len() >= min && digits.iter().all(|digit| *digit == digits[0])
        })
    }

    pub fn is_empty(&self) -> bool {
        self.emails.is_empty()
            && self.email_domains.is_empty()
            && self.phones.is_empty()
            && self.repeated_digit_min.is_none()
    }
}

/// Which of a request's values were blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dropped {
    pub email: bool,
    pub phone: bool,
}

/// A request's values with the blocked ones taken out (docs/SPEC.md §10.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screened {
    /// What is left to reconcile, and what was dropped.
    Kept(IdentifyRequest, Dropped),
    /// Every value was blocked: the request must be refused.
    AllBlocked(Dropped),
}

/// Drops the values `is_blocked` names.
pub fn screen(request: &IdentifyRequest, is_blocked: impl Fn(&ContactValue) -> bool) -> Screened {
    let email = request
        .email()
        .filter(|email| !is_blocked(&ContactValue::Email((*email).clone())));
    let phone = request
        .phone()
        .filter(|phone| !is_blocked(&ContactValue::Phone((*phone).clone())));
    let dropped = Dropped {
        email: request.email().is_some() && email.is_none(),
        phone: request.phone().is_some() && phone.is_none(),
    };
    match IdentifyRequest::new(email.cloned(), phone.cloned()) {
        Ok(kept) => Screened::Kept(kept, dropped),
        Err(_) => Screened::AllBlocked(dropped),
    }
}

impl fmt::Display for ContactValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(raw: &str) -> Email {
        Email::parse(raw).unwrap().unwrap()
    }

    fn phone(raw: &str) -> Phone {
        Phone::parse(raw).unwrap().unwrap()
    }

    #[test]
    fn the_defaults_block_junk_and_nothing_real() {
        let rules = BlockRules::defaults();
        for junk in [
            "0000000000",
            "000000",
            "+99999999",
            "1234567890",
            "123456789",
        ] {
            assert!(rules.blocks_phone(&phone(junk)), "{junk}");
        }
        for real in ["00000", "1000000000", "123456", "+14155550100"] {
            assert!(!rules.blocks_phone(&phone(real)), "{real}");
        }
        assert!(rules.blocks_email(&email(" TEST@test.com ")));
        assert!(!rules.blocks_email(&email("test@test.company")));
        assert!(!rules.blocks_email(&email("lorraine@hillvalley.edu")));
    }

    #[test]
    fn the_file_format_reads_domains_patterns_and_values() {
        let rules = BlockRules::parse(
            "# shop's own details\n*@Mailinator.com\n(555) 010-0000  # the till\nfront@desk.io\nrepeated-digit:4\n\n",
        )
        .unwrap();
        assert!(rules.blocks_email(&email("anyone@mailinator.com")));
        assert!(!rules.blocks_email(&email("anyone@sub.mailinator.com")));
        assert!(rules.blocks_email(&email("Front@Desk.io")));
        assert!(rules.blocks_phone(&phone("5550100000")));
        assert!(rules.blocks_phone(&phone("7777")));
        assert!(!rules.blocks_phone(&phone("777")));
    }

    #[test]
    fn a_bad_line_is_named() {
        let err = BlockRules::parse("ok@x.io\n\nnot a phone\n").unwrap_err();
        assert_eq!(err.line, 3);
        let err = BlockRules::parse("repeated-digit:1").unwrap_err();
        assert_eq!(err.line, 1);
    }

    #[test]
    fn screening_drops_blocked_values_and_refuses_an_empty_request() {
        let rules = BlockRules::defaults();
        let is_blocked = |value: &ContactValue| match value {
            ContactValue::Email(e) => rules.blocks_email(e),
            ContactValue::Phone(p) => rules.blocks_phone(p),
        };
        let request = IdentifyRequest::parse(Some("a@x.io"), Some("0000000000")).unwrap();
        let Screened::Kept(kept, dropped) = screen(&request, is_blocked) else {
            panic!("the email is left");
        };
        assert_eq!(kept.phone(), None);
        assert_eq!(kept.email(), request.email());
        assert!(dropped.phone && !dropped.email);
        let request = IdentifyRequest::parse(Some("test@test.com"), Some("0000000000")).unwrap();
        assert_eq!(
            screen(&request, is_blocked),
            Screened::AllBlocked(Dropped {
                email: true,
                phone: true
            })
        );
    }
}
