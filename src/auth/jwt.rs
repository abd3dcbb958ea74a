//! JWTs for frontends whose users sign in with the site's identity provider
//! (docs/SPEC.md §9): HS256 with a shared secret, or RS256/ES256 against the
//! provider's JWKS (a file, or a URL re-read when a token names a key it does not
//! hold, at most once a minute). Issuer and audience are always checked; `exp` and
//! `nbf` with a small leeway; scopes come from `scope` (space-separated) or `scp`.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{AuthFailure, Principal, Scopes};
use crate::auth::Secret;

/// Seconds of clock difference tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;
/// A JWKS is re-read at most this often, however many unknown `kid`s arrive.
const JWKS_REFRESH_EVERY: Duration = Duration::from_secs(60);
/// A JWKS this old is read again on its next use, so a key the provider removed
/// (a compromised one) stops being trusted; a failed read keeps the old set.
const JWKS_MAX_AGE: Duration = Duration::from_secs(600);
/// How long fetching a JWKS may take.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the verifying keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    Secret(Secret),
    JwksFile(PathBuf),
    JwksUrl(String),
}

/// The JWT settings, all required once any is given.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub source: KeySource,
    pub issuer: String,
    pub audience: String,
}

/// Verifies JWTs for one process.
pub struct JwtVerifier {
    settings: JwtSettings,
    jwks: Mutex<Option<(JwkSet, Instant)>>,
    /// When a token naming an unknown key last made us re-read the JWKS: tokens
    /// with made-up `kid`s must not make us fetch it on every request.
    last_refresh: Mutex<Option<Instant>>,
    http: reqwest::Client,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<ScopeClaim>,
}

/// `scp` is a list in some providers' tokens and a string in others'.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    List(Vec<String>),
    Text(String),
}

impl JwtVerifier {
    pub fn new(settings: JwtSettings) -> Self {
        Self {
            settings,
            jwks: Mutex::new(None),
            last_refresh: Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(JWKS_FETCH_TIMEOUT)
                .build()
                .unwrap_or_default(),
        }
    }

    /// Reads the JWKS now, so a wrong file or URL shows at start-up.
    pub async fn preload(&self) -> Result<(), String> {
        match &self.settings.source {
            KeySource::Secret(_) => Ok(()),
            _ => self.reload().await.map(drop),
        }
    }

    /// The principal a token names, if it verifies.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthFailure> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthFailure::Malformed)?;
        let (key, algorithm) = match &self.settings.source {
            KeySource::Secret(secret) => (
                DecodingKey::from_secret(secret.expose().as_bytes()),
                Algorithm::HS256,
            ),
            KeySource::JwksFile(_) | KeySource::JwksUrl(_) => {
                if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
                    return Err(AuthFailure::InvalidToken);
                }
                (self.key_for(header.kid.as_deref()).await?, header.alg)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => {
                    AuthFailure::ExpiredToken
                }
                _ => AuthFailure::InvalidToken,
            })?
            .claims;
        let scopes = match (&claims.scope, &claims.scp) {
            (Some(scope), _) => Scopes::from_names(scope.split_whitespace()),
            (None, Some(ScopeClaim::List(list))) => {
                Scopes::from_names(list.iter().map(String::as_str))
            }
            (None, Some(ScopeClaim::Text(text))) => Scopes::from_names(text.split_whitespace()),
            (None, None) => Scopes::default(),
        };
        Ok(Principal {
            id: format!("jwt:{}", claims.sub),
            scopes,
        })
    }

    /// The JWKS key `kid` names (the only key when the token names none and the set
    /// holds one), re-reading the set once if it is unknown.
    async fn key_for(&self, kid: Option<&str>) -> Result<DecodingKey, AuthFailure> {
        let aged = self
            .lock()
            .as_ref()
            .is_some_and(|(_, loaded)| loaded.elapsed() >= JWKS_MAX_AGE);
        if aged && let Err(err) = self.reload().await {
            tracing::warn!(error = %err, "could not re-read the JWKS; keeping the keys held");
        }
        if let Some(key) = self.cached_key(kid) {
            return key;
        }
        let loaded = self.lock().is_some();
        let may_refresh = !loaded || {
            let mut last = self
                .last_refresh
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let due = last.is_none_or(|at| at.elapsed() >= JWKS_REFRESH_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if may_refresh {
            self.reload().await.map_err(|err| {
                tracing::warn!(error = %err, "could not read the JWKS");
                AuthFailure::Unavailable
            })?;
        }
        self.cached_key(kid)
            .unwrap_or(Err(AuthFailure::InvalidToken))
    }

    fn cached_key(&self, kid: Option<&str>) -> Option<Result<DecodingKey, AuthFailure>> {
        let jwks = self.lock();
        let keys = &jwks.as_ref()?.0.keys;
        let jwk = match kid {
            Some(kid) => keys
                .iter()
                .find(|jwk| jwk.common.key_id.as_deref() == Some(kid))?,
            None if keys.len() == 1 => &keys[0],
            None => return Some(Err(AuthFailure::InvalidToken)),
        };
        Some(DecodingKey::from_jwk(jwk).map_err(|_| AuthFailure::InvalidToken))
    }

    async fn reload(&self) -> Result<usize, String> {
        let text = match &self.settings.source {
            KeySource::Secret(_) => return Ok(0),
            KeySource::JwksFile(path) => {
                std::fs::read_to_string(path).map_err(|err| format!("{}: {err}", path.display()))?
            }
            KeySource::JwksUrl(url) => self
                .http
                .get(url)
                .send()
                .await
                .and_then(|response| response.error_for_status())
                .map_err(|err| format!("{url}: {err}"))?
                .text()
                .await
                .map_err(|err| format!("{url}: {err}"))?,
        };
        let keys: JwkSet =
            serde_json::from_str(&text).map_err(|err| format!("not a JWKS: {err}"))?;
        let count = keys.keys.len();
        *self.lock() = Some((keys, Instant::now()));
        Ok(count)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(JwkSet, Instant)>> {
        self.jwks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether a credential has a JWT's shape (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(JwtSettings {
            source: KeySource::Secret(Secret::new("a shared secret of enough length!")),
            issuer: "https://id.example".into(),
            audience: "identity-api".into(),
        })
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[tokio::test]
    async fn a_good_token_names_its_subject_and_scopes() {
        let claims = json!({"sub": "u1", "iss": "https://id.example", "aud": "identity-api",
                            "exp": now() + 60, "scope": "identify read"});
        let principal = verifier()
            .verify(&token(claims, "a shared secret of enough length!"))
            .await
            .unwrap();
        assert_eq!(principal.id, "jwt:u1");
        assert_eq!(principal.scopes.names(), ["identify", "read"]);
        let scp = json!({"sub": "u2", "iss": "https://id.example", "aud": "identity-api",
                         "exp": now() + 60, "scp": ["read"]});
        let principal = verifier()
            .verify(&token(scp, "a shared secret of enough length!"))
            .await
            .unwrap();
        assert_eq!(principal.scopes.names(), ["read"]);
    }

    #[tokio::test]
    async fn every_bad_token_is_refused() {
        let good = json!({"sub": "u", "iss": "https://id.example", "aud": "identity-api",
                          "exp": now() + 60});
        let secret = "a shared secret of enough length!";
        let mut expired = good.clone();
        expired["exp"] = json!(now() - 120);
        let mut future = good.clone();
        future["nbf"] = json!(now() + 3600);
        let mut wrong_aud = good.clone();
        wrong_aud["aud"] = json!("someone-else");
        let mut wrong_iss = good.clone();
        wrong_iss["iss"] = json!("https://evil.example");
        let cases = [
            (token(expired, secret), AuthFailure::ExpiredToken),
            (token(future, secret), AuthFailure::ExpiredToken),
            (token(wrong_aud, secret), AuthFailure::InvalidToken),
            (token(wrong_iss, secret), AuthFailure::InvalidToken),
            (
                token(good.clone(), "another secret"),
                AuthFailure::InvalidToken,
            ),
            // alg none: an unsigned token.
            (
                "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1In0.".to_owned(),
                AuthFailure::Malformed,
            ),
        ];
        for (token, failure) in cases {
            assert_eq!(
                verifier().verify(&token).await.unwrap_err(),
                failure,
                "{token}"
            );
        }
    }
}
