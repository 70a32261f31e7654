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

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use spike_sdk::api::{RateLimitRule, RateLimits, Route};

/// Most buckets a replica keeps.
pub const BUCKETS_MAX: usize = 10_000;

/// Why a request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// When a token will be there.
    pub retry_after: Duration,
}

impl Limited {
    /// `Retry-After` in whole seconds, rounded up (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs();
        let rounded = if self.retry_after.subsec_nanos() > 0 {
            secs + 1
        } else {
            secs
        };
        rounded.max(1)
    }
}

/// One token bucket.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(rule: &RateLimitRule, now: Instant) -> Self {
        Self {
            tokens: f64::from(rule.burst),
            rate: f64::from(rule.rate_per_second),
            burst: f64::from(rule.burst),
            refilled: now,
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
        Err(Limited {
            retry_after: Duration::from_secs_f64(wait.max(0.001)),
        })
    }

    fn full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

struct Buckets {
    /// The rules the buckets were made for, as their stored bytes: new
    /// rules start every bucket afresh.
    rules_bytes: Option<Vec<u8>>,
    rules: RateLimits,
    buckets: HashMap<(String, Route), Bucket>,
}

/// The limiter of one replica.
pub struct RateLimiter {
    state: Mutex<Buckets>,
    limited: Family<[(&'static str, &'static str); 1], Counter>,
    buckets_gauge: Gauge,
    rules_gauge: Gauge,
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
                rules_bytes: None,
                rules: RateLimits::default(),
                buckets: HashMap::new(),
            }),
            limited,
            buckets_gauge: Gauge::default(),
            rules_gauge: Gauge::default(),
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
    /// Takes a token for `caller` on `route` under `rules` (their stored
    /// bytes, `None` when no limits were ever set; compared to the last
    /// seen, so a change resets the buckets).
    pub fn admit(
        &self,
        caller: &str,
        route: Route,
        rules_bytes: Option<&[u8]>,
        decode: impl FnOnce(&[u8]) -> Option<RateLimits>,
        now: Instant,
    ) -> Result<(), Limited> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.rules_bytes.as_deref() != rules_bytes {
            state.rules = rules_bytes.and_then(decode).unwrap_or_default();
            state.rules_bytes = rules_bytes.map(<[u8]>::to_vec);
            state.buckets.clear();
            self.rules_gauge
                .set(i64::try_from(state.rules.rules.len()).unwrap_or(i64::MAX));
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
        if outcome.is_err() {
            self.limited
                .get_or_create(&[("route", route.path_and_query())])
                .inc();
        }
        outcome
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
        serde_json::to_vec(&RateLimits { rules }).expect("json")
    }

    fn decode(bytes: &[u8]) -> Option<RateLimits> {
        serde_json::from_slice(bytes).ok()
    }

    fn rule(spiffe_id: &str, rate: u32, burst: u32) -> RateLimitRule {
        RateLimitRule {
            spiffe_id: spiffe_id.to_owned(),
            route: "*".to_owned(),
            rate_per_second: rate,
            burst,
        }
    }

    #[test]
    fn a_burst_is_let_through_then_refused_until_a_token_refills() {
        let limiter = RateLimiter::default();
        let rules = limits(vec![rule("spiffe://a.org/noisy", 2, 3)]);
        let now = Instant::now();
        let admit = |caller: &str, at: Instant| {
            limiter.admit(caller, Route::SecretGet, Some(&rules), decode, at)
        };
        for _ in 0..3 {
            assert_eq!(admit("spiffe://a.org/noisy", now), Ok(()));
        }
        let limited = admit("spiffe://a.org/noisy", now).expect_err("over the burst");
        assert_eq!(limited.retry_after, Duration::from_millis(500));
        assert_eq!(limited.retry_after_secs(), 1);
        // Another caller has its own (here: no) limit.
        for _ in 0..100 {
            assert_eq!(admit("spiffe://a.org/quiet", now), Ok(()));
        }
        assert_eq!(
            admit("spiffe://a.org/noisy", now + Duration::from_millis(500)),
            Ok(())
        );
        // New rules start afresh; no rules, no limit.
        for _ in 0..10 {
            assert_eq!(
                limiter.admit("spiffe://a.org/noisy", Route::SecretGet, None, decode, now),
                Ok(())
            );
        }
    }

    #[test]
    fn the_bucket_map_stays_bounded() {
        let limiter = RateLimiter::default();
        let rules = limits(vec![rule("*", 1, 1)]);
        let now = Instant::now();
        for index in 0..BUCKETS_MAX + 10 {
            let caller = format!("spiffe://a.org/{index}");
            let _ = limiter.admit(&caller, Route::SecretGet, Some(&rules), decode, now);
        }
        let held = limiter.state.lock().expect("lock").buckets.len();
        assert!(held <= BUCKETS_MAX, "{held}");
    }

    #[test]
    fn retry_after_rounds_up() {
        let of = |millis| Limited {
            retry_after: Duration::from_millis(millis),
        };
        assert_eq!(of(1).retry_after_secs(), 1);
        assert_eq!(of(1000).retry_after_secs(), 1);
        assert_eq!(of(1001).retry_after_secs(), 2);
    }
}
