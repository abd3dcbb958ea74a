//! Who is calling, and what they may do (docs/SPEC.md §9): scopes, principals, API
//! keys verified against the database through a short-lived cache, and the mode
//! that decides whether a credential is needed at all.

pub mod jwt;
pub mod keys;
pub mod mask;
mod secret;
pub mod throttle;

pub use secret::Secret;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::ValueEnum;

use crate::db::{DbError, DbPool, api_keys};
use throttle::{ClientKey, RateLimiter};

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `POST /identify` and the `identify` mutation.
    Identify,
    /// `identify` with its answer's emails and phones masked (`l*****e@x.io`,
    /// `****56`): for callers such as a browser checkout.
    IdentifyMasked,
    /// Every field that returns contact data.
    Read,
    /// Key management and repairs.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope::Identify,
        Scope::IdentifyMasked,
        Scope::Read,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Identify => "identify",
            Scope::IdentifyMasked => "identify:masked",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == name)
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub fn all() -> Self {
        Scope::ALL.into_iter().collect()
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & Self::bit(scope) != 0
    }

    fn bit(scope: Scope) -> u8 {
        1 << Scope::ALL
            .iter()
            .position(|known| *known == scope)
            .unwrap_or(0)
    }

    /// The scopes named in `names`; unknown names are left out (a key made by a
    /// newer build may hold scopes this one does not know).
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        names.into_iter().filter_map(Scope::parse).collect()
    }

    pub fn names(self) -> Vec<&'static str> {
        Scope::ALL
            .into_iter()
            .filter(|scope| self.contains(*scope))
            .map(Scope::as_str)
            .collect()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(scopes: I) -> Self {
        Scopes(
            scopes
                .into_iter()
                .fold(0, |bits, scope| bits | Self::bit(scope)),
        )
    }
}

/// A caller the service has identified (or, with authentication off, anyone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `key:<id>`, or `anonymous`: what logs and the rate limit name it by.
    pub id: String,
    pub scopes: Scopes,
}

impl Principal {
    pub fn anonymous() -> Self {
        Self {
            id: "anonymous".to_owned(),
            scopes: Scopes::all(),
        }
    }
}

/// Why a credential was not accepted; `as_str` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    UnknownKey,
    RevokedKey,
    WrongSecret,
    /// A JWT past its `exp` (or before its `nbf`).
    ExpiredToken,
    /// Too many look-ups of unknown keys from this address: try again shortly.
    Throttled,
    /// A JWT with a bad signature, issuer, audience or algorithm.
    InvalidToken,
    /// The keys could not be read: the database or the JWKS is unreachable.
    Unavailable,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 9] = [
        AuthFailure::Missing,
        AuthFailure::Malformed,
        AuthFailure::UnknownKey,
        AuthFailure::RevokedKey,
        AuthFailure::WrongSecret,
        AuthFailure::ExpiredToken,
        AuthFailure::InvalidToken,
        AuthFailure::Throttled,
        AuthFailure::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::RevokedKey => "revoked_key",
            AuthFailure::WrongSecret => "wrong_secret",
            AuthFailure::ExpiredToken => "expired_token",
            AuthFailure::InvalidToken => "invalid_token",
            AuthFailure::Throttled => "throttled",
            AuthFailure::Unavailable => "unavailable",
        }
    }

    /// What the client is told: enough to fix its request, nothing about keys.
    pub fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => {
                "authentication required: send Authorization: Bearer <API key or JWT>"
            }
            AuthFailure::ExpiredToken => "the token has expired or is not valid yet",
            AuthFailure::Throttled => {
                "too many unknown credentials from this address; retry shortly"
            }
            AuthFailure::Malformed => {
                "the Authorization header is not a bearer credential this service issues"
            }
            AuthFailure::UnknownKey
            | AuthFailure::RevokedKey
            | AuthFailure::WrongSecret
            | AuthFailure::InvalidToken => "the credential is not valid",
            AuthFailure::Unavailable => {
                "credentials cannot be checked right now; try again shortly"
            }
        }
    }
}

/// The outcome of authenticating one request, as handlers and guards see it.
#[derive(Debug, Clone)]
pub enum Authentication {
    Principal(Principal),
    Failed(AuthFailure),
}

/// Whether emails and phones in an answer are masked for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Masking {
    None,
    Values,
}

/// Why a principal may not do something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Unauthenticated(AuthFailure),
    Forbidden(Scope),
}

impl Authentication {
    /// The principal, if it holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<&Principal, Denied> {
        match self {
            Authentication::Failed(failure) => Err(Denied::Unauthenticated(*failure)),
            Authentication::Principal(principal) if principal.scopes.contains(scope) => {
                Ok(principal)
            }
            Authentication::Principal(_) => Err(Denied::Forbidden(scope)),
        }
    }

    /// How an `identify` answer may be shown to this caller: whole with the
    /// `identify` scope, masked with `identify:masked` alone.
    pub fn identify_access(&self) -> Result<Masking, Denied> {
        match self.require(Scope::Identify) {
            Ok(_) => Ok(Masking::None),
            Err(Denied::Forbidden(_)) if self.require(Scope::IdentifyMasked).is_ok() => {
                Ok(Masking::Values)
            }
            Err(denied) => Err(denied),
        }
    }

    /// The caller's name for logs: a principal's id, or `unauthenticated`.
    pub fn name(&self) -> &str {
        match self {
            Authentication::Principal(principal) => &principal.id,
            Authentication::Failed(_) => "unauthenticated",
        }
    }

    pub fn is_authenticated(&self) -> bool {
        matches!(self, Authentication::Principal(_))
    }
}

/// Whether credentials are needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Needed as soon as JWTs are configured or an API key exists (and always off
    /// loopback unless --allow-anonymous).
    Auto,
    /// Always needed.
    Required,
    /// Never: everyone is anonymous with every scope.
    Off,
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMode::Auto => "auto",
            AuthMode::Required => "required",
            AuthMode::Off => "off",
        })
    }
}

/// A key as last read from the database, or its absence.
#[derive(Debug, Clone)]
struct CachedKey {
    /// `None`: no such key.
    key: Option<KnownKey>,
    fetched: Instant,
}

#[derive(Debug, Clone)]
struct KnownKey {
    secret_sha256: String,
    scopes: Scopes,
    revoked: bool,
}

/// Keys remembered at once; past this, unknown and stale ones are forgotten.
const MAX_CACHED_KEYS: usize = 10_000;
/// Database look-ups of keys one client address may cause: a real client needs one
/// per key and cache period, a flood of made-up keys is held to this.
const LOOKUPS_PER_SECOND: f64 = 5.0;
const LOOKUP_BURST: u32 = 20;

/// Why a key could not be looked up.
enum Lookup {
    Throttled,
    Database(DbError),
}

impl From<DbError> for Lookup {
    fn from(err: DbError) -> Self {
        Lookup::Database(err)
    }
}
/// `last_used_at` is written at most this often per key and process.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Verifies credentials for one server process.
pub struct Authenticator {
    pool: DbPool,
    mode: AuthMode,
    /// How long a key read from the database is trusted, and how often `auto` mode
    /// looks for keys again.
    cache_for: Duration,
    /// Once true, stays true for the life of the process: revoking the last key
    /// must lock the service, not open it to everyone.
    keys_exist: AtomicBool,
    keys_checked: Mutex<Option<Instant>>,
    /// Whether anonymous callers may be served at all (a loopback address, or
    /// `--allow-anonymous`); when not, `auto` always requires a credential.
    anonymous_allowed: bool,
    /// Key look-ups in the database per client address: a flood of made-up keys
    /// is throttled before it reaches the pool.
    lookups: RateLimiter,
    cache: Mutex<HashMap<String, CachedKey>>,
    touched: Mutex<HashMap<String, Instant>>,
    jwt: Option<jwt::JwtVerifier>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("cache_for", &self.cache_for)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(
        pool: DbPool,
        mode: AuthMode,
        cache_for: Duration,
        jwt: Option<jwt::JwtSettings>,
        anonymous_allowed: bool,
    ) -> Self {
        Self {
            pool,
            mode,
            cache_for,
            keys_exist: AtomicBool::new(false),
            keys_checked: Mutex::new(None),
            anonymous_allowed,
            lookups: RateLimiter::new(LOOKUPS_PER_SECOND, Some(LOOKUP_BURST))
                .expect("a positive rate"),
            cache: Mutex::new(HashMap::new()),
            touched: Mutex::new(HashMap::new()),
            jwt: jwt.map(jwt::JwtVerifier::new),
        }
    }

    /// The JWT verifier, when JWTs are configured.
    pub fn jwt(&self) -> Option<&jwt::JwtVerifier> {
        self.jwt.as_ref()
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Whether callers must present a credential now.
    pub async fn required(&self) -> bool {
        match self.mode {
            AuthMode::Off => false,
            AuthMode::Required => true,
            AuthMode::Auto => {
                !self.anonymous_allowed || self.jwt.is_some() || self.keys_exist().await
            }
        }
    }

    /// Whether an active key exists, re-read from the database once per cache
    /// period. A database error keeps the last answer.
    pub async fn keys_exist(&self) -> bool {
        let stale = lock(&self.keys_checked).is_none_or(|at| at.elapsed() >= self.cache_for);
        if stale && !self.keys_exist.load(Ordering::Relaxed) {
            if let Ok(true) = self.read_keys_exist().await {
                self.keys_exist.store(true, Ordering::Relaxed);
            }
            *lock(&self.keys_checked) = Some(Instant::now());
        }
        self.keys_exist.load(Ordering::Relaxed)
    }

    async fn read_keys_exist(&self) -> Result<bool, DbError> {
        let mut conn = self.pool.get().await?;
        Ok(api_keys::any_active(&mut conn).await?)
    }

    /// Authenticates a request from its `Authorization` header value; `client` is
    /// the caller's address, which database look-ups of unknown keys are charged to.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        client: Option<IpAddr>,
    ) -> Authentication {
        if !self.required().await {
            return Authentication::Principal(Principal::anonymous());
        }
        let Some(header) = authorization else {
            return Authentication::Failed(AuthFailure::Missing);
        };
        let Some(token) = bearer(header) else {
            return Authentication::Failed(AuthFailure::Malformed);
        };
        let Some(presented) = keys::parse(token) else {
            return match &self.jwt {
                Some(verifier) if jwt::looks_like_jwt(token) => {
                    match verifier.verify(token).await {
                        Ok(principal) => Authentication::Principal(principal),
                        Err(failure) => Authentication::Failed(failure),
                    }
                }
                _ => Authentication::Failed(AuthFailure::Malformed),
            };
        };
        let key = match self.key(presented.id, client).await {
            Ok(Some(key)) => key,
            Ok(None) => return Authentication::Failed(AuthFailure::UnknownKey),
            Err(Lookup::Throttled) => return Authentication::Failed(AuthFailure::Throttled),
            Err(Lookup::Database(err)) => {
                tracing::warn!(error = %err, "could not read API keys");
                return Authentication::Failed(AuthFailure::Unavailable);
            }
        };
        if key.revoked {
            return Authentication::Failed(AuthFailure::RevokedKey);
        }
        if !keys::secret_matches(presented.secret, &key.secret_sha256) {
            return Authentication::Failed(AuthFailure::WrongSecret);
        }
        self.touch(presented.id);
        Authentication::Principal(Principal {
            id: format!("key:{}", presented.id),
            scopes: key.scopes,
        })
    }

    /// The key `id`, from the cache while it is fresh, else from the database (a
    /// look-up `client` pays for).
    async fn key(&self, id: &str, client: Option<IpAddr>) -> Result<Option<KnownKey>, Lookup> {
        if let Some(cached) = lock(&self.cache).get(id)
            && cached.fetched.elapsed() < self.cache_for
        {
            return Ok(cached.key.clone());
        }
        // Only ids never seen to exist are charged: a real key re-read after its
        // cache time costs its caller nothing, a made-up one costs a token.
        let known = lock(&self.cache)
            .get(id)
            .is_some_and(|cached| cached.key.is_some());
        if !known
            && let Some(client) = client
            && self.lookups.check(&ClientKey::Address(client), 1).is_err()
        {
            return Err(Lookup::Throttled);
        }
        let mut conn = self.pool.get().await.map_err(DbError::from)?;
        let key = api_keys::find(&mut conn, id)
            .await
            .map_err(DbError::from)?
            .map(|record| KnownKey {
                scopes: Scopes::from_names(record.scope_names()),
                revoked: record.revoked_at.is_some(),
                secret_sha256: record.secret_sha256,
            });
        let mut cache = lock(&self.cache);
        if cache.len() >= MAX_CACHED_KEYS {
            // Entries for ids with no key are what fills it (made-up keys): drop
            // those and the stale ones, keep the verified keys.
            cache.retain(|_, cached| {
                cached.key.is_some() && cached.fetched.elapsed() < self.cache_for
            });
        }
        cache.insert(
            id.to_owned(),
            CachedKey {
                key: key.clone(),
                fetched: Instant::now(),
            },
        );
        Ok(key)
    }

    /// Writes `last_used_at` in the background, at most once a minute per key.
    fn touch(&self, id: &str) {
        {
            let mut touched = lock(&self.touched);
            if touched.get(id).is_some_and(|at| at.elapsed() < TOUCH_EVERY) {
                return;
            }
            if touched.len() >= MAX_CACHED_KEYS {
                touched.clear();
            }
            touched.insert(id.to_owned(), Instant::now());
        }
        let (pool, id) = (self.pool.clone(), id.to_owned());
        tokio::spawn(async move {
            if let Ok(mut conn) = pool.get().await
                && let Err(err) = api_keys::touch(&mut conn, &id).await
            {
                tracing::warn!(key = %id, error = %err, "could not note a key's last use");
            }
        });
    }
}

/// The credential of an `Authorization: Bearer …` header value.
fn bearer(header: &str) -> Option<&str> {
    let (scheme, credential) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
        .filter(|credential| !credential.is_empty())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Logs a read of contact data for the audit trail: who, what, how many contacts;
/// never a value.
pub fn audit_read(principal: &str, operation: &str, contacts: usize) {
    tracing::info!(target: "audit", principal, operation, contacts, "contact data read");
}

/// Makes a key with `name` and `scopes`; returns its id and the key itself, which
/// exists nowhere else from then on.
pub async fn create_key(
    conn: &mut diesel_async::AsyncPgConnection,
    name: &str,
    scopes: &[Scope],
) -> Result<(String, String), String> {
    let key = keys::generate().map_err(|err| format!("no randomness for a key: {err}"))?;
    api_keys::insert(
        conn,
        &api_keys::NewApiKey {
            id: &key.id,
            name,
            scopes: scopes.iter().map(|scope| scope.as_str()).collect(),
            secret_sha256: &key.secret_sha256,
        },
    )
    .await
    .map_err(|err| format!("could not store the key: {err}"))?;
    Ok((key.id, key.token))
}

/// Lists keys for people: never their secrets (which are not stored anyway).
pub fn describe(record: &api_keys::ApiKeyRecord) -> String {
    let when = |at: Option<chrono::DateTime<Utc>>| {
        at.map_or_else(
            || "-".to_owned(),
            |at| at.format("%Y-%m-%d %H:%M").to_string(),
        )
    };
    format!(
        "{}  {:<24}  {:<22}  created {}  last used {}  {}",
        record.id,
        record.name,
        record.scope_names().collect::<Vec<_>>().join(","),
        record.created_at.format("%Y-%m-%d %H:%M"),
        when(record.last_used_at),
        if record.revoked_at.is_some() {
            format!("REVOKED {}", when(record.revoked_at))
        } else {
            "active".to_owned()
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_and_require_works() {
        let scopes = Scopes::from_names(["read", "identify", "unknown"]);
        assert!(scopes.contains(Scope::Read) && scopes.contains(Scope::Identify));
        assert!(!scopes.contains(Scope::Admin));
        assert_eq!(scopes.names(), ["identify", "read"]);
        let caller = Authentication::Principal(Principal {
            id: "key:x".into(),
            scopes: Scopes::from_names(["identify"]),
        });
        assert!(caller.require(Scope::Identify).is_ok());
        assert_eq!(
            caller.require(Scope::Read).unwrap_err(),
            Denied::Forbidden(Scope::Read)
        );
        let nobody = Authentication::Failed(AuthFailure::Missing);
        assert_eq!(
            nobody.require(Scope::Identify).unwrap_err(),
            Denied::Unauthenticated(AuthFailure::Missing)
        );
    }

    #[test]
    fn only_bearer_credentials_are_read() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
