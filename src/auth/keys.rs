//! API keys as text: `irk_<id>_<secret>` (docs/SPEC.md §9). The prefix lets secret
//! scanners recognise a leaked key; the id finds its row; the secret is 256 random
//! bits, of which only the SHA-256 is ever stored.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every key starts with.
pub const PREFIX: &str = "irk_";
const ID_HEX: usize = 16;
const SECRET_HEX: usize = 64;

/// A key split into its parts; the secret is only ever hashed.
#[derive(PartialEq, Eq)]
pub struct ParsedKey<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

impl std::fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedKey")
            .field("id", &self.id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// Splits a presented credential; `None` when it does not have a key's shape.
pub fn parse(token: &str) -> Option<ParsedKey<'_>> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let lower_hex = |part: &str, len: usize| {
        part.len() == len && part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    (lower_hex(id, ID_HEX) && lower_hex(secret, SECRET_HEX)).then_some(ParsedKey { id, secret })
}

/// A new key: its id, the SHA-256 of its secret, and the whole key to hand out once.
pub struct NewKey {
    pub id: String,
    pub secret_sha256: String,
    pub token: String,
}

pub fn generate() -> Result<NewKey, getrandom::Error> {
    let mut id = [0u8; ID_HEX / 2];
    let mut secret = [0u8; SECRET_HEX / 2];
    getrandom::fill(&mut id)?;
    getrandom::fill(&mut secret)?;
    let (id, secret) = (hex(&id), hex(&secret));
    Ok(NewKey {
        secret_sha256: secret_sha256(&secret),
        token: format!("{PREFIX}{id}_{secret}"),
        id,
    })
}

/// The stored form of a secret.
pub fn secret_sha256(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` hashes to `stored`, in time that does not depend on where they
/// differ.
pub fn secret_matches(secret: &str, stored: &str) -> bool {
    secret_sha256(secret)
        .as_bytes()
        .ct_eq(stored.as_bytes())
        .into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_parses_and_its_secret_matches_only_its_hash() {
        let key = generate().unwrap();
        assert!(key.token.starts_with("irk_"));
        let parsed = parse(&key.token).unwrap();
        assert_eq!(parsed.id, key.id);
        assert!(secret_matches(parsed.secret, &key.secret_sha256));
        assert!(!key.secret_sha256.contains(parsed.secret));
        let other = generate().unwrap();
        assert!(!secret_matches(parsed.secret, &other.secret_sha256));
        assert_ne!(key.id, other.id);
        assert!(!format!("{parsed:?}").contains(parsed.secret));
    }

    #[test]
    fn anything_else_is_not_a_key() {
        for token in [
            "",
            "irk_",
            "irk_0123456789abcdef",
            "irk_0123456789abcdef_short",
            "irk_0123456789ABCDEF_0000000000000000000000000000000000000000000000000000000000000000",
            "xyz_0123456789abcdef_0000000000000000000000000000000000000000000000000000000000000000",
            "eyJhbGciOiJub25lIn0.e30.",
        ] {
            assert!(parse(token).is_none(), "{token}");
        }
    }
}
