//! Rate limits at the API edge: token buckets per (caller, route), on the
//! rules the superuser sets cluster-wide (`spike cluster limits set`,
//! replicated as [`crate::state::command::LimitsCommand`]).
//!
//! Each replica enforces the rules on the requests it receives, on its own
//! buckets: limits are per replica, so a caller spread over N replicas gets
//! up to N times its rate. (Dividing by the voter count would starve a
//! caller that talks to one replica, as the SDK does once it knows the
//! leader; per-replica buckets need no coordination and no extra log
//! entries.) The superuser is never limited on the cluster routes, so it
//! can always change or remove the limits that lock others out.
//!
//! Buckets live in a map of at most [`BUCKETS_MAX`] entries; when it is
//! full, buckets that have refilled to their burst (indistinguishable from
//! a new one) are dropped, and if none has, the least recently used.
//!
//! Refusing must cost less than serving, or a caller that ignores 429s
//! still takes the replica from everyone else:
//! - The rules are read from the applied state only when the applied
//!   index has moved since they were last read, not on every request.
//! - A caller told to retry after a moment that asks again before that
//!   moment is held, not answered: its request sleeps until the moment it
//!   was given (at most [`HOLD_MAX`]) and is then admitted if a token is
//!   there, refused otherwise. A client that ignores `Retry-After` thus
//!   gets at most one refusal per request it keeps open per second (its
//!   connections and streams are bounded by the edge), instead of as many
//!   as it can send; a client that honours it is never held. At most
//!   [`HELD_MAX`] requests are held at once on a replica; past that,
//!   refusals are answered at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use spike_sdk::api::{RateLimitRule, RateLimits, Route};

/// Most buckets a replica keeps.
pub const BUCKETS_MAX: usize = 10_000;
/// Longest a request that came back too early is held before its answer.
pub const HOLD_MAX: Duration = Duration::from_secs(1);
/// Most requests held at once on a replica.
pub const HELD_MAX: usize = 4096;

/// Why a request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// When a token will be there.
    pub retry_after: Duration,
    /// The caller came back before the `Retry-After` it was given: hold
    /// the request this long, then ask again ([`RateLimiter::hold`]).
    /// Zero for a caller that waited as told.
    pub hold: Duration,
}

/// A request refused or not decidable.
#[derive(Debug)]
pub enum NotAdmitted<E> {
    /// Over the caller's limit.
    Limited(Limited),
    /// The rules could not be read.
    Unreadable(E),
}

impl Limited {
    /// `Retry-After` in whole seconds, rounded up (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        whole_seconds(self.retry_after)
    }
}

/// `duration` in whole seconds, rounded up (at least 1).
fn whole_seconds(duration: Duration) -> u64 {
    let secs = duration.as_secs();
    let rounded = if duration.subsec_nanos() > 0 {
        secs + 1
    } else {
        secs
    };
    rounded.max(1)
}

/// One token bucket.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    refilled: Instant,
    /// Until when the caller was last told to wait (`Retry-After`).
    told_until: Option<Instant>,
}

impl Bucket {
    fn new(rule: &RateLimitRule, now: Instant) -> Self {
        Self {
            tokens: f64::from(rule.burst),
            rate: f64::from(rule.rate_per_second),
            burst: f64::from(rule.burst),
            refilled: now,
            told_until: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
    }

    fn take(&mut self, now: Instant) -> Result<(), Limited> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / self.rate;
        let retry_after = Duration::from_secs_f64(wait.max(0.001));
        let hold = match self.told_until {
            // Back before the moment it was given: it ignored the answer.
            Some(until) if until > now => (until - now).min(HOLD_MAX),
            _ => {
                // What `Retry-After` will say: whole seconds, rounded up.
                let told = Duration::from_secs(whole_seconds(retry_after));
                self.told_until = Some(now + told);
                Duration::ZERO
            }
        };
        Err(Limited { retry_after, hold })
    }

    fn full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

struct Buckets {
    /// The applied index the rules were last read at: until it moves,
    /// they are not read again.
    read_at: Option<u64>,
    /// The rules the buckets were made for, as their stored bytes: new
    /// rules start every bucket afresh.
    rules_bytes: Option<Vec<u8>>,
    rules: RateLimits,
    buckets: HashMap<(String, Route), Bucket>,
}

/// The limiter of one replica.
pub struct RateLimiter {
    state: Mutex<Buckets>,
    held: AtomicUsize,
    limited: Family<[(&'static str, &'static str); 1], Counter>,
    buckets_gauge: Gauge,
    rules_gauge: Gauge,
    held_gauge: Gauge,
    held_total: Counter,
}

impl Default for RateLimiter {
    fn default() -> Self {
        let limited: Family<[(&'static str, &'static str); 1], Counter> = Family::default();
        // Every route at 0 from start-up (a bounded set), so an alert on
        // `increase(...)` has a series before the first refusal.
        for route in Route::ALL {
            drop(limited.get_or_create(&[("route", route.path_and_query())]));
        }
        Self {
            state: Mutex::new(Buckets {
                read_at: None,
                rules_bytes: None,
                rules: RateLimits::default(),
                buckets: HashMap::new(),
            }),
            held: AtomicUsize::new(0),
            limited,
            buckets_gauge: Gauge::default(),
            rules_gauge: Gauge::default(),
            held_gauge: Gauge::default(),
            held_total: Counter::default(),
        }
    }
}

/// Whether `route` is never limited for the superuser: the routes it needs
/// to see and repair the cluster, limits included.
pub fn superuser_exempt(route: Route) -> bool {
    matches!(
        route,
        Route::ClusterStatus
            | Route::ClusterMembers
            | Route::ClusterAdd
            | Route::ClusterRemove
            | Route::ClusterTransfer
            | Route::ClusterLimits
            | Route::ClusterSetLimits
    )
}

impl RateLimiter {
    /// Takes a token for `caller` on `route`. The rules are those of the
    /// applied state at index `applied`: `read_rules` (their stored bytes,
    /// `None` when no limits were ever set) is called only when that index
    /// moved since the last read, and bytes unlike the last seen start
    /// every bucket afresh.
    pub fn admit<E>(
        &self,
        caller: &str,
        route: Route,
        applied: u64,
        read_rules: impl FnOnce() -> Result<Option<Vec<u8>>, E>,
        now: Instant,
    ) -> Result<(), NotAdmitted<E>> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.read_at != Some(applied) {
            let rules_bytes = read_rules().map_err(NotAdmitted::Unreadable)?;
            state.read_at = Some(applied);
            if state.rules_bytes != rules_bytes {
                // Undecodable rules (never written: apply validates them)
                // limit nothing rather than lock every caller out.
                state.rules = rules_bytes
                    .as_deref()
                    .and_then(|bytes| crate::state::store::decode("limits", bytes).ok())
                    .unwrap_or_default();
                state.rules_bytes = rules_bytes;
                state.buckets.clear();
                self.rules_gauge
                    .set(i64::try_from(state.rules.rules.len()).unwrap_or(i64::MAX));
            }
        }
        let Some(rule) = state.rules.rule_for(caller, route).cloned() else {
            return Ok(());
        };
        if rule.rate_per_second == 0 {
            return Ok(());
        }
        let key = (caller.to_owned(), route);
        if !state.buckets.contains_key(&key) && state.buckets.len() >= BUCKETS_MAX {
            evict(&mut state.buckets, now);
        }
        let outcome = state
            .buckets
            .entry(key)
            .or_insert_with(|| Bucket::new(&rule, now))
            .take(now);
        self.buckets_gauge
            .set(i64::try_from(state.buckets.len()).unwrap_or(i64::MAX));
        drop(state);
        outcome.map_err(NotAdmitted::Limited)
    }

    /// Counts a refusal that is answered (after any hold).
    pub fn refused(&self, route: Route) {
        self.limited
            .get_or_create(&[("route", route.path_and_query())])
            .inc();
    }

    /// Holds a request for `limited.hold`, if there is room among the
    /// held ones ([`HELD_MAX`]); returns whether it was held (and should
    /// then ask again).
    pub async fn hold(&self, limited: Limited) -> bool {
        if limited.hold.is_zero() {
            return false;
        }
        let taken = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < HELD_MAX).then_some(held + 1)
            });
        if taken.is_err() {
            return false;
        }
        // Released however the hold ends, the caller hanging up included.
        let _held = Held(self);
        self.held_total.inc();
        self.held_gauge.inc();
        tokio::time::sleep(limited.hold).await;
        true
    }

    /// Registers the limiter's metrics.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "rate_limited",
            "Requests this replica refused with 429 for a rate limit, by route",
            self.limited.clone(),
        );
        registry.register(
            "rate_limit_buckets",
            "Token buckets this replica holds (at most 10000)",
            self.buckets_gauge.clone(),
        );
        registry.register(
            "rate_limit_rules",
            "Rate-limit rules in force (spike cluster limits)",
            self.rules_gauge.clone(),
        );
        registry.register(
            "rate_limit_held",
            "Requests held now because their caller came back before its Retry-After (at most 4096)",
            self.held_gauge.clone(),
        );
        registry.register(
            "rate_limit_holds",
            "Requests ever held because their caller came back before its Retry-After",
            self.held_total.clone(),
        );
    }
}

/// One held request, counted until dropped.
struct Held<'a>(&'a RateLimiter);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
        self.0.held_gauge.dec();
    }
}

/// Makes room for one bucket: drops every full bucket, or if none is, the
/// least recently used.
fn evict(buckets: &mut HashMap<(String, Route), Bucket>, now: Instant) {
    let before = buckets.len();
    buckets.retain(|_, bucket| !bucket.full(now));
    if buckets.len() < before {
        return;
    }
    if let Some(oldest) = buckets
        .iter()
        .min_by_key(|(_, bucket)| bucket.refilled)
        .map(|(key, _)| key.clone())
    {
        buckets.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rules: Vec<RateLimitRule>) -> Vec<u8> {
        crate::state::store::encode(&RateLimits { rules }).expect("encode")
    }

    fn rule(spiffe_id: &str, rate: u32, burst: u32) -> RateLimitRule {
        RateLimitRule {
            spiffe_id: spiffe_id.to_owned(),
            route: "*".to_owned(),
            rate_per_second: rate,
            burst,
        }
    }

    /// `admit` with rules read at applied index `applied`.
    fn admit(
        limiter: &RateLimiter,
        caller: &str,
        applied: u64,
        rules: Option<&[u8]>,
        at: Instant,
    ) -> Result<(), Limited> {
        let read = || Ok::<_, ()>(rules.map(<[u8]>::to_vec));
        limiter
            .admit(caller, Route::SecretGet, applied, read, at)
            .map_err(|refused| match refused {
                NotAdmitted::Limited(limited) => limited,
                NotAdmitted::Unreadable(()) => panic!("unreadable"),
            })
    }

    #[test]
    fn a_burst_is_let_through_then_refused_until_a_token_refills() {
        let limiter = RateLimiter::default();
        let rules = limits(vec![rule("spiffe://a.org/noisy", 2, 3)]);
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(
                admit(&limiter, "spiffe://a.org/noisy", 1, Some(&rules), now),
                Ok(())
            );
        }
        let limited = admit(&limiter, "spiffe://a.org/noisy", 1, Some(&rules), now)
            .expect_err("over the burst");
        assert_eq!(limited.retry_after, Duration::from_millis(500));
        assert_eq!(limited.retry_after_secs(), 1);
        assert_eq!(
            limited.hold,
            Duration::ZERO,
            "the first refusal is not held"
        );
        // Another caller has its own (here: no) limit.
        for _ in 0..100 {
            assert_eq!(
                admit(&limiter, "spiffe://a.org/quiet", 1, Some(&rules), now),
                Ok(())
            );
        }
        // Told to come back in 1 s; a token is there after 0.5 s.
        let later = now + Duration::from_secs(1);
        assert_eq!(
            admit(&limiter, "spiffe://a.org/noisy", 1, Some(&rules), later),
            Ok(())
        );
        // New rules start afresh; no rules, no limit.
        for _ in 0..10 {
            assert_eq!(
                admit(&limiter, "spiffe://a.org/noisy", 2, None, now),
                Ok(())
            );
        }
    }

    #[test]
    fn a_caller_back_before_its_retry_after_is_held_until_then() {
        let limiter = RateLimiter::default();
        let rules = limits(vec![rule("spiffe://a.org/noisy", 1, 1)]);
        let caller = "spiffe://a.org/noisy";
        let now = Instant::now();
        assert_eq!(admit(&limiter, caller, 1, Some(&rules), now), Ok(()));
        let first = admit(&limiter, caller, 1, Some(&rules), now).expect_err("over");
        assert_eq!((first.retry_after_secs(), first.hold), (1, Duration::ZERO));
        // Back 200 ms later, ignoring the answer: held for the rest of the
        // second it was given, however many times it asks.
        for _ in 0..3 {
            let early = admit(
                &limiter,
                caller,
                1,
                Some(&rules),
                now + Duration::from_millis(200),
            )
            .expect_err("still early");
            assert_eq!(early.hold, Duration::from_millis(800));
        }
        // At the moment it was given, a token is there: admitted.
        let on_time = now + Duration::from_secs(1);
        assert_eq!(admit(&limiter, caller, 1, Some(&rules), on_time), Ok(()));
        // The next refusal is answered at once again, with a new moment.
        let again = admit(&limiter, caller, 1, Some(&rules), on_time).expect_err("over");
        assert_eq!(again.hold, Duration::ZERO);
        let early = admit(&limiter, caller, 1, Some(&rules), on_time).expect_err("early");
        assert_eq!(early.hold, Duration::from_secs(1));
    }

    #[test]
    fn the_rules_are_read_again_only_when_the_applied_index_moves() {
        let limiter = RateLimiter::default();
        let rules = limits(vec![rule("*", 1, 1)]);
        let reads = std::cell::Cell::new(0);
        let now = Instant::now();
        let admit_at = |applied: u64, caller: &str| {
            let read = || {
                reads.set(reads.get() + 1);
                Ok::<_, ()>(Some(rules.clone()))
            };
            limiter.admit(caller, Route::SecretGet, applied, read, now)
        };
        for index in 0..100 {
            let _ = admit_at(7, &format!("spiffe://a.org/{index}"));
        }
        assert_eq!(reads.get(), 1);
        let _ = admit_at(8, "spiffe://a.org/x");
        assert_eq!(reads.get(), 2);
        // Unreadable rules refuse the request and are read again next time.
        let failed = limiter.admit("spiffe://a.org/x", Route::SecretGet, 9, || Err("io"), now);
        assert!(matches!(failed, Err(NotAdmitted::Unreadable("io"))));
        let _ = admit_at(9, "spiffe://a.org/x");
        assert_eq!(reads.get(), 3);
    }

    #[tokio::test]
    async fn holds_are_bounded_and_counted() {
        let limiter = RateLimiter::default();
        let limited = Limited {
            retry_after: Duration::from_secs(1),
            hold: Duration::from_millis(30),
        };
        assert!(
            !limiter
                .hold(Limited {
                    hold: Duration::ZERO,
                    ..limited
                })
                .await
        );
        let began = tokio::time::Instant::now();
        assert!(limiter.hold(limited).await);
        assert!(began.elapsed() >= Duration::from_millis(30));
        assert_eq!(limiter.held.load(Ordering::Acquire), 0);
        limiter.held.store(HELD_MAX, Ordering::Release);
        assert!(!limiter.hold(limited).await, "no room: answered at once");
    }

    #[test]
    fn the_bucket_map_stays_bounded() {
        let limiter = RateLimiter::default();
        let rules = limits(vec![rule("*", 1, 1)]);
        let now = Instant::now();
        for index in 0..BUCKETS_MAX + 10 {
            let caller = format!("spiffe://a.org/{index}");
            let _ = admit(&limiter, &caller, 1, Some(&rules), now);
        }
        let held = limiter.state.lock().expect("lock").buckets.len();
        assert!(held <= BUCKETS_MAX, "{held}");
    }

    #[test]
    fn retry_after_rounds_up() {
        let of = |millis| Limited {
            retry_after: Duration::from_millis(millis),
            hold: Duration::ZERO,
        };
        assert_eq!(of(1).retry_after_secs(), 1);
        assert_eq!(of(1000).retry_after_secs(), 1);
        assert_eq!(of(1001).retry_after_secs(), 2);
    }
}
