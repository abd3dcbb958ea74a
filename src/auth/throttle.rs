//! The request throttle: a token bucket (GCRA) per client, over a bounded table of
//! clients of our own (governor's keyed stores grow with every key). The HTTP rate
//! limit and the throttle on unknown API keys both draw on it.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{NotUntil, Quota};

/// Clients remembered at once: about 100 bytes each, so at most ~10 MB.
pub const MAX_TRACKED_CLIENTS: usize = 100_000;

/// Who a rate-limit bucket belongs to: an authenticated principal, wherever it calls
/// from, or else a client address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    Principal(String),
    Address(IpAddr),
}

/// A token bucket (GCRA) per client address.
pub struct RateLimiter<C: Clock = DefaultClock> {
    limiter: governor::RateLimiter<ClientKey, SharedClients, C, NoOpMiddleware<C::Instant>>,
    clients: Arc<BoundedClients>,
    clock: C,
    burst: u32,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("burst", &self.burst)
            .field("clients", &self.clients.len())
            .finish()
    }
}

impl RateLimiter {
    /// `None` when `per_second` is not positive: rate limiting is off. The burst
    /// defaults to one second's worth, at least 1.
    pub fn new(per_second: f64, burst: Option<u32>) -> Option<Self> {
        Self::with_clock(
            per_second,
            burst,
            MAX_TRACKED_CLIENTS,
            DefaultClock::default(),
        )
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    pub fn with_clock(
        per_second: f64,
        burst: Option<u32>,
        capacity: usize,
        clock: C,
    ) -> Option<Self> {
        if !(per_second > 0.0 && per_second.is_finite()) {
            return None;
        }
        let burst = burst.unwrap_or(per_second.ceil() as u32).max(1);
        let period = Duration::from_secs_f64(1.0 / per_second).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst)?);
        // A client idle this long has its whole burst back: forgetting it loses nothing.
        let refill = period.saturating_mul(burst);
        let clients = Arc::new(BoundedClients::new(capacity, refill));
        Some(Self {
            limiter: governor::RateLimiter::new(
                quota,
                SharedClients(clients.clone()),
                clock.clone(),
            ),
            clients,
            clock,
            burst,
        })
    }

    /// Most tokens one client can hold, so the most one request can take.
    pub fn burst(&self) -> f64 {
        f64::from(self.burst)
    }

    /// Takes `tokens` tokens for `client` (all or none), or says how long until they
    /// are available.
    pub fn check(&self, client: &ClientKey, tokens: u32) -> Result<(), Duration> {
        let Some(tokens) = NonZeroU32::new(tokens) else {
            return Ok(());
        };
        match self.limiter.check_key_n(client, tokens) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(self.wait(&not_until)),
            // More than a whole burst: it will never fit; say how long a full refill takes.
            Err(_) => Err(Duration::from_secs(u64::from(self.burst))),
        }
    }

    fn wait(&self, not_until: &NotUntil<C::Instant>) -> Duration {
        not_until.wait_time_from(self.clock.now())
    }
}

/// The client table: governor keeps its GCRA state in each entry's
/// [`InMemoryState`]; this decides which entry a client gets.
struct BoundedClients {
    clients: DashMap<ClientKey, Client>,
    /// Shared by every client that arrives while the table is full.
    overflow: InMemoryState,
    capacity: usize,
    refill: Duration,
    started: Instant,
    /// When idle clients were last forgotten (milliseconds since `started`).
    last_sweep_ms: AtomicU64,
}

#[derive(Default)]
struct Client {
    state: InMemoryState,
    last_seen_ms: AtomicU64,
}

impl BoundedClients {
    fn new(capacity: usize, refill: Duration) -> Self {
        Self {
            clients: DashMap::new(),
            overflow: InMemoryState::default(),
            capacity: capacity.max(1),
            refill,
            started: Instant::now(),
            last_sweep_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Clients tracked now.
    fn len(&self) -> usize {
        self.clients.len()
    }

    /// Forgets clients idle for a whole refill, at most once per refill period:
    /// their buckets are full, so a fresh entry would behave the same.
    fn forget_idle(&self, now_ms: u64) {
        let refill_ms = (self.refill.as_millis() as u64).max(1);
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < refill_ms
            || self
                .last_sweep_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.clients.retain(|_, client| {
            now_ms.saturating_sub(client.last_seen_ms.load(Ordering::Relaxed)) < refill_ms
        });
    }
}

/// The table as governor's state store; the limiter keeps a handle to read its size.
struct SharedClients(Arc<BoundedClients>);

impl StateStore for SharedClients {
    type Key = ClientKey;

    fn measure_and_replace<T, F, E>(&self, key: &ClientKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl BoundedClients {
    fn measure_and_replace<T, F, E>(&self, key: &ClientKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let now_ms = self.now_ms();
        if let Some(client) = self.clients.get(key) {
            client.last_seen_ms.store(now_ms, Ordering::Relaxed);
            return client.state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        if self.clients.len() >= self.capacity {
            self.forget_idle(now_ms);
            if self.clients.len() >= self.capacity {
                return self.overflow.measure_and_replace(&NotKeyed::NonKey, f);
            }
        }
        let client = self.clients.entry(key.clone()).or_default();
        client.last_seen_ms.store(now_ms, Ordering::Relaxed);
        client.state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limiter(
        per_second: f64,
        burst: u32,
        capacity: usize,
    ) -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let limiter =
            RateLimiter::with_clock(per_second, Some(burst), capacity, clock.clone()).unwrap();
        (limiter, clock)
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_the_rate() {
        let (limiter, clock) = limiter(2.0, 3, 100);
        let client = ClientKey::Address("127.0.0.1".parse().unwrap());
        for _ in 0..3 {
            assert!(limiter.check(&client, 1).is_ok());
        }
        let wait = limiter.check(&client, 1).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-3, "{wait:?}");
        clock.advance(Duration::from_millis(500));
        assert!(limiter.check(&client, 1).is_ok());
        // Other clients have buckets of their own, and so does a principal.
        assert!(
            limiter
                .check(&ClientKey::Address("10.0.0.1".parse().unwrap()), 1)
                .is_ok()
        );
        assert!(
            limiter
                .check(&ClientKey::Principal("key:a".into()), 3)
                .is_ok()
        );
    }

    #[test]
    fn several_tokens_are_taken_all_or_none() {
        let (limiter, _clock) = limiter(1.0, 5, 100);
        let client = ClientKey::Address("127.0.0.1".parse().unwrap());
        assert!(limiter.check(&client, 4).is_ok());
        assert!(limiter.check(&client, 2).is_err(), "only 1 left");
        assert!(limiter.check(&client, 1).is_ok());
        assert!(
            limiter.check(&client, 6).is_err(),
            "more than a burst never fits"
        );
    }

    #[test]
    fn zero_rate_means_off() {
        assert!(RateLimiter::new(0.0, None).is_none());
        assert!(RateLimiter::new(f64::NAN, None).is_none());
    }

    #[test]
    fn a_flood_of_distinct_clients_stays_within_the_table() {
        let (limiter, _clock) = limiter(1.0, 1, 1_000);
        let mut refused = 0;
        for n in 0..50_000u32 {
            let client = ClientKey::Address(IpAddr::from(n.to_be_bytes()));
            if limiter.check(&client, 1).is_err() {
                refused += 1;
            }
        }
        let clients = limiter.clients.len();
        assert!(clients <= 1_000, "{clients} clients tracked");
        // Past the table, the flood shares one bucket: nearly all of it is refused.
        assert!(refused >= 48_000, "{refused} refused");
    }
}
