//! What the generator sends: a seeded mix of identify requests over values that
//! belong to one run only, so that a run never meets earlier data and its values can
//! be told apart in answers and in the database.
//!
//! A request carries its email and phone as numbers drawn from one run-wide counter;
//! they are spelt out as text only on the wire ([`RunId::email`], [`RunId::phone`])
//! and read back from answers and rows with [`RunId::parse_email`] and
//! [`RunId::parse_phone`]. Numbers keep the model check's bookkeeping small.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use serde::ser::SerializeMap;

/// The domain of every generated email; reserved-looking, so no real mail is sent.
const EMAIL_DOMAIN: &str = "load.test";

/// Stirs a 64-bit value so that nearby inputs give unrelated outputs (the SplitMix64
/// finaliser). Worker seeds `seed ^ i` differ in a few bits only and would
/// otherwise start visibly related streams.
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// SplitMix64: tiny, fast and statistically sound enough to choose requests.
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// A number in `0..n`, for `n > 0`. Multiply-shift rather than `%`: no bias worth
    /// mentioning for any `n`, and no division.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Six decimal digits written into every value of one run.
///
/// Phones are `7`, the run id, then the value's number: the fixed width keeps values
/// of different runs distinct, and the 20-digit limit of phones leaves 13 digits for
/// the number, far more than any run issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RunId(u32);

impl RunId {
    /// One past the largest run id: ids have six digits.
    pub const LIMIT: u32 = 1_000_000;

    /// `None` when `id` has more than six digits.
    pub fn new(id: u32) -> Option<Self> {
        (id < Self::LIMIT).then_some(Self(id))
    }

    /// A run id from the seed and the moment, so that rerunning one seed against the
    /// same database still sends values nobody has sent before.
    pub fn derive(seed: u64, now_nanos: u64) -> Self {
        Self((mix64(seed ^ mix64(now_nanos)) % u64::from(Self::LIMIT)) as u32)
    }

    pub fn email(self, n: u64) -> String {
        format!("u{n}-{self}@{EMAIL_DOMAIN}")
    }

    pub fn phone(self, n: u64) -> String {
        format!("7{self}{n}")
    }

    /// The number of an email this run generated; `None` for any other email.
    pub fn parse_email(self, email: &str) -> Option<u64> {
        let suffix = format!("-{self}@{EMAIL_DOMAIN}");
        parse_number(email.strip_prefix('u')?.strip_suffix(suffix.as_str())?)
    }

    /// The number of a phone this run generated; `None` for any other phone.
    pub fn parse_phone(self, phone: &str) -> Option<u64> {
        let prefix = format!("7{self}");
        parse_number(phone.strip_prefix(prefix.as_str())?)
    }

    /// A `LIKE` pattern matching every email this run may generate.
    pub fn email_pattern(self) -> String {
        format!("%-{self}@{EMAIL_DOMAIN}")
    }

    /// A `LIKE` pattern matching every phone this run may generate.
    pub fn phone_pattern(self) -> String {
        format!("7{self}%")
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:06}", self.0)
    }
}

/// Only the spelling `n.to_string()` gives is accepted (no `+`, no leading zeros), so
/// that every value read back maps to exactly one number and back.
fn parse_number(digits: &str) -> Option<u64> {
    let n: u64 = digits.parse().ok()?;
    (n.to_string() == digits).then_some(n)
}

/// The kinds of request in a [`Mix`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A brand-new customer: an email and a phone never sent before.
    New,
    /// An acknowledged request again, sometimes with only one of its values.
    Repeat,
    /// A known customer's email with a fresh phone: adds a secondary.
    Extend,
    /// The email of one acknowledged request with the phone of another: merges.
    Bridge,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::New, Kind::Repeat, Kind::Extend, Kind::Bridge];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::New => "new",
            Kind::Repeat => "repeat",
            Kind::Extend => "extend",
            Kind::Bridge => "bridge",
        }
    }
}

/// Relative weights of the request kinds, written `new=30,repeat=40,extend=15,bridge=15`;
/// a kind left out weighs 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix([u32; 4]);

impl Mix {
    pub fn weight(&self, kind: Kind) -> u32 {
        self.0[kind as usize]
    }

    fn pick(&self, rng: &mut Prng) -> Kind {
        let total: u64 = self.0.iter().map(|&w| u64::from(w)).sum();
        let mut ticket = rng.below(total);
        for kind in Kind::ALL {
            let weight = u64::from(self.weight(kind));
            if ticket < weight {
                return kind;
            }
            ticket -= weight;
        }
        // The tickets cover `0..total` exactly, so this is never reached.
        Kind::New
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let mut weights = [None; 4];
        for part in raw
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not of the form kind=weight"))?;
            let name = name.trim();
            let kind = Kind::ALL
                .into_iter()
                .find(|kind| kind.as_str() == name)
                .ok_or_else(|| {
                    format!("unknown kind `{name}` (the kinds are new, repeat, extend, bridge)")
                })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("the weight of `{name}` must be a whole number"))?;
            if weights[kind as usize].replace(weight).is_some() {
                return Err(format!("`{name}` is given twice"));
            }
        }
        let weights = weights.map(|weight| weight.unwrap_or(0));
        if weights.iter().all(|&weight| weight == 0) {
            return Err("at least one kind needs a positive weight".to_owned());
        }
        Ok(Self(weights))
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            let separator = if i == 0 { "" } else { "," };
            write!(f, "{separator}{}={}", kind.as_str(), self.weight(kind))?;
        }
        Ok(())
    }
}

impl Serialize for Mix {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(Kind::ALL.len()))?;
        for kind in Kind::ALL {
            map.serialize_entry(kind.as_str(), &self.weight(kind))?;
        }
        map.end()
    }
}

/// The values of one identify request, by number; `None` leaves the field out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Request {
    pub email: Option<u64>,
    pub phone: Option<u64>,
}

/// A request with both values that got a 200: the server knows both values now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Known {
    email: u64,
    phone: u64,
}

/// Bridges are sent as new customers until the pool holds this many requests (or is
/// full, when the key space is smaller).
const BRIDGE_CROWD: usize = 1000;

/// The key space: the last `capacity` distinct acknowledged requests.
///
/// Only acknowledged requests enter, so that repeat, extend and bridge build on
/// values the server has committed; a request that failed may or may not have
/// committed, and building on it would make the answer checks guess.
struct Pool {
    capacity: usize,
    order: VecDeque<Known>,
    members: HashSet<Known>,
}

impl Pool {
    fn remember(&mut self, known: Known) {
        // A repeat does not refresh its entry: keeping insertion order makes the
        // pool a plain ring, and repeats are drawn from it anyway.
        if !self.members.insert(known) {
            return;
        }
        self.order.push_back(known);
        if self.order.len() > self.capacity
            && let Some(evicted) = self.order.pop_front()
        {
            self.members.remove(&evicted);
        }
    }

    fn pick(&self, rng: &mut Prng) -> Option<Known> {
        let len = self.order.len() as u64;
        (len > 0).then(|| self.order[rng.below(len) as usize])
    }

    /// Two different entries, for a bridge.
    fn pick_two(&self, rng: &mut Prng) -> Option<(Known, Known)> {
        let len = self.order.len() as u64;
        if len < 2 {
            return None;
        }
        let first = rng.below(len);
        let mut second = rng.below(len - 1);
        if second >= first {
            second += 1;
        }
        Some((self.order[first as usize], self.order[second as usize]))
    }
}

/// The request source shared by all workers: the mix, the counter of fresh values
/// and the pool of acknowledged requests.
pub struct Workload {
    mix: Mix,
    next_value: AtomicU64,
    pool: Mutex<Pool>,
}

impl Workload {
    pub fn new(mix: Mix, keys: usize) -> Self {
        Self {
            mix,
            next_value: AtomicU64::new(1),
            pool: Mutex::new(Pool {
                capacity: keys,
                order: VecDeque::with_capacity(keys.min(1 << 16)),
                members: HashSet::new(),
            }),
        }
    }

    /// The next request and its kind. A kind the pool cannot serve yet (nothing
    /// acknowledged, or fewer than two entries for a bridge) becomes `new`, and the
    /// returned kind says so.
    pub fn next(&self, rng: &mut Prng) -> (Kind, Request) {
        let kind = self.mix.pick(rng);
        let drawn = {
            let pool = self.pool();
            match kind {
                Kind::New => None,
                Kind::Repeat | Kind::Extend => pool.pick(rng).map(|known| (known, known)),
                // Bridges between a handful of customers would merge them all into
                // one giant identity before the key space fills; wait for a crowd.
                Kind::Bridge if pool.order.len() < pool.capacity.min(BRIDGE_CROWD) => None,
                Kind::Bridge => pool.pick_two(rng),
            }
        };
        match (kind, drawn) {
            (Kind::Repeat, Some((known, _))) => (Kind::Repeat, repeat(known, rng)),
            (Kind::Extend, Some((known, _))) => (
                Kind::Extend,
                Request {
                    email: Some(known.email),
                    phone: Some(self.fresh()),
                },
            ),
            (Kind::Bridge, Some((email_of, phone_of))) => (
                Kind::Bridge,
                Request {
                    email: Some(email_of.email),
                    phone: Some(phone_of.phone),
                },
            ),
            _ => (
                Kind::New,
                Request {
                    email: Some(self.fresh()),
                    phone: Some(self.fresh()),
                },
            ),
        }
    }

    /// Adds a request that got a 200 to the pool, if it carried both values.
    pub fn acknowledge(&self, request: Request) {
        if let (Some(email), Some(phone)) = (request.email, request.phone) {
            self.pool().remember(Known { email, phone });
        }
    }

    /// One acknowledged request with both values, if any: what a repair picks from.
    pub fn sample(&self, rng: &mut Prng) -> Option<Request> {
        self.pool().pick(rng).map(|known| Request {
            email: Some(known.email),
            phone: Some(known.phone),
        })
    }

    fn fresh(&self) -> u64 {
        self.next_value.fetch_add(1, Ordering::Relaxed)
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        // Every update leaves the pool consistent, so a worker that panicked while
        // holding the lock cannot have broken it.
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Re-sends `known`; one repeat in ten sends only the email and one only the phone,
/// to exercise the single-value path.
fn repeat(known: Known, rng: &mut Prng) -> Request {
    match rng.below(10) {
        0 => Request {
            email: Some(known.email),
            phone: None,
        },
        1 => Request {
            email: None,
            phone: Some(known.phone),
        },
        _ => Request {
            email: Some(known.email),
            phone: Some(known.phone),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_reads_back_as_written_and_refuses_nonsense() {
        let mix: Mix = "new=30, repeat=40,extend=15,bridge=15".parse().unwrap();
        assert_eq!(mix.to_string(), "new=30,repeat=40,extend=15,bridge=15");
        let partial: Mix = "bridge=2".parse().unwrap();
        assert_eq!(partial.to_string(), "new=0,repeat=0,extend=0,bridge=2");
        for bad in ["", "new=0", "old=1", "new=1,new=2", "new=-1", "new"] {
            assert!(bad.parse::<Mix>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn values_read_back_only_for_their_own_run() {
        let run = RunId::new(42).unwrap();
        let other = RunId::new(420).unwrap();
        assert_eq!(run.email(7), "u7-000042@load.test");
        assert_eq!(run.phone(7), "70000427");
        assert_eq!(run.parse_email(&run.email(7)), Some(7));
        assert_eq!(run.parse_phone(&run.phone(7)), Some(7));
        assert_eq!(other.parse_email(&run.email(7)), None);
        assert_eq!(other.parse_phone(&run.phone(7)), None);
        assert_eq!(run.parse_email("u07-000042@load.test"), None);
        assert_eq!(run.parse_phone("7000042+7"), None);
        // The service accepts at most 20 digits.
        assert!(run.phone(9_999_999_999_999).len() <= 20);
        assert!(RunId::new(RunId::LIMIT).is_none());
    }

    #[test]
    fn below_stays_in_range_and_repeats_with_its_seed() {
        let mut a = Prng::new(mix64(5));
        let mut b = Prng::new(mix64(5));
        for n in 1..500 {
            let x = a.below(n);
            assert!(x < n);
            assert_eq!(x, b.below(n));
        }
    }

    fn only(kind: &str) -> Workload {
        Workload::new(format!("{kind}=1").parse().unwrap(), 2)
    }

    #[test]
    fn kinds_the_pool_cannot_serve_fall_back_to_new_with_fresh_values() {
        let mut rng = Prng::new(1);
        let cases = [
            ("repeat", Kind::Repeat),
            ("extend", Kind::Extend),
            // One known request serves a repeat or an extend; a bridge needs two.
            ("bridge", Kind::New),
        ];
        for (kind, with_one_known) in cases {
            let workload = only(kind);
            let (first_kind, first) = workload.next(&mut rng);
            assert_eq!(first_kind, Kind::New, "{kind} with an empty pool");
            workload.acknowledge(first);
            assert_eq!(workload.next(&mut rng).0, with_one_known, "{kind}");
        }
        let workload = only("new");
        let mut seen = HashSet::new();
        for _ in 0..100 {
            let (_, request) = workload.next(&mut rng);
            assert!(seen.insert(request.email.unwrap()) && seen.insert(request.phone.unwrap()));
        }
    }

    #[test]
    fn a_bridge_joins_two_different_known_requests() {
        let workload = only("bridge");
        let a = Request {
            email: Some(1),
            phone: Some(2),
        };
        let b = Request {
            email: Some(3),
            phone: Some(4),
        };
        workload.acknowledge(a);
        workload.acknowledge(b);
        let mut rng = Prng::new(9);
        for _ in 0..50 {
            let (kind, bridge) = workload.next(&mut rng);
            assert_eq!(kind, Kind::Bridge);
            assert!(
                bridge
                    == Request {
                        email: Some(1),
                        phone: Some(4)
                    }
                    || bridge
                        == Request {
                            email: Some(3),
                            phone: Some(2)
                        },
                "{bridge:?}"
            );
        }
    }

    #[test]
    fn the_pool_keeps_the_last_distinct_acknowledged_requests() {
        let workload = only("repeat");
        let known = |n| Request {
            email: Some(n),
            phone: Some(n + 100),
        };
        for n in [1, 2, 1, 3] {
            workload.acknowledge(known(n));
        }
        // Email-only or phone-only acknowledgements do not enter the pool.
        workload.acknowledge(Request {
            email: Some(9),
            phone: None,
        });
        let mut rng = Prng::new(3);
        let mut drawn = HashSet::new();
        for _ in 0..200 {
            let (_, request) = workload.next(&mut rng);
            drawn.insert(request.email.or(request.phone.map(|p| p - 100)));
        }
        assert_eq!(drawn, HashSet::from([Some(2), Some(3)]));
    }
}
