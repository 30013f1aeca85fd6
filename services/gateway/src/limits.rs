//! Rate limits and daily quotas. Token buckets (governor) per API key and, on routes that set one, per caller and
//! route, both counted in this replica. Daily quotas per key are counted in the database: each replica adds its
//! counts every few seconds and learns the total, so a key can overshoot its quota by at most what the replicas
//! served in one flush interval.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::GatewayError;
use crate::identity::{Principal, day_of};
use crate::store::Store;

/// The default token bucket of a key that sets none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub per_second: f64,
    pub burst: u32,
}

impl Bucket {
    pub fn of(limit: &airq_api::gateway::RateLimit) -> Self {
        Self {
            per_second: limit.requests_per_second,
            burst: limit.burst,
        }
    }

    /// The governor quota; `None` when the bucket is not valid (rate not above 0, or burst 0).
    pub fn quota(self) -> Option<Quota> {
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            return None;
        }
        let period = Duration::from_secs_f64(1.0 / self.per_second);
        let burst = NonZeroU32::new(self.burst.max(1))?;
        Some(Quota::with_period(period)?.allow_burst(burst))
    }
}

struct KeyBucket {
    bucket: Bucket,
    limiter: DefaultDirectRateLimiter,
}

/// Who a daily count is for: a stored API key (its usage is kept in the database) or a token's subject (counted in
/// this replica only). Typed, so that no subject (`bob@example.com`) is ever read as something else.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    Key(Arc<str>),
    Token(Arc<str>),
}

impl Subject {
    fn of(principal: &Principal) -> Self {
        match &principal.key_id {
            Some(id) => Self::Key(id.clone()),
            None => Self::Token(principal.user.clone()),
        }
    }
}

/// A day's count for one subject: what the database said at the last flush, plus what this replica served since.
struct DailyCount {
    stored: AtomicI64,
    pending: AtomicI64,
}

/// A route's bucket per caller.
pub struct RouteLimiter {
    bucket: Bucket,
    limiter: DefaultKeyedRateLimiter<String>,
}

impl RouteLimiter {
    pub fn new(bucket: Bucket) -> Option<Self> {
        Some(Self {
            bucket,
            limiter: RateLimiter::keyed(bucket.quota()?),
        })
    }

    pub fn bucket(&self) -> Bucket {
        self.bucket
    }

    /// Takes a token for `caller`, or says how long to wait.
    pub fn check(&self, caller: &str) -> Result<(), Duration> {
        // Looking up with a borrowed key would be nicer; governor's keyed limiter takes the key by reference to an
        // owned value, so a short string is built per request.
        self.limiter
            .check_key(&caller.to_owned())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Drops buckets that have refilled (callers not seen lately), so memory does not grow with every caller.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
    }

    /// Callers with a bucket.
    pub fn callers(&self) -> usize {
        self.limiter.len()
    }
}

/// Failed authentications allowed per client address: a burst, then one every this many milliseconds. Past that
/// the address is refused (429) without a look at the database until it has waited.
const FAILED_AUTH_BURST: u32 = 20;
const FAILED_AUTH_PERIOD_MS: u64 = 500;
/// Addresses remembered for failed authentications, at most (memory stays bounded whatever the callers).
const FAILED_AUTH_ADDRESSES: usize = 100_000;

/// Failed authentications per client address.
pub struct AuthFailures {
    quota: Quota,
    limiter: std::sync::RwLock<governor::DefaultKeyedRateLimiter<std::net::IpAddr>>,
    blocked: DashMap<std::net::IpAddr, std::time::Instant>,
}

impl Default for AuthFailures {
    fn default() -> Self {
        let quota = Quota::with_period(Duration::from_millis(FAILED_AUTH_PERIOD_MS))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(FAILED_AUTH_BURST).unwrap_or(NonZeroU32::MIN));
        Self {
            quota,
            limiter: std::sync::RwLock::new(RateLimiter::keyed(quota)),
            blocked: DashMap::new(),
        }
    }
}

impl AuthFailures {
    /// Whether `address` may try to authenticate now; how long to wait otherwise.
    pub fn may_try(&self, address: std::net::IpAddr) -> Result<(), Duration> {
        match self.blocked.get(&address).map(|until| *until) {
            Some(until) => match until.checked_duration_since(std::time::Instant::now()) {
                Some(wait) if !wait.is_zero() => Err(wait),
                _ => {
                    self.blocked.remove(&address);
                    Ok(())
                }
            },
            None => Ok(()),
        }
    }

    /// Counts a failed authentication from `address`; past the allowance the address waits.
    pub fn failed(&self, address: std::net::IpAddr) {
        metrics::counter!("airq_gateway_auth_failures_total").increment(1);
        let checked = self
            .limiter
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .check_key(&address);
        if let Err(not_until) = checked {
            if self.blocked.len() >= FAILED_AUTH_ADDRESSES {
                self.blocked.clear();
            }
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            self.blocked.insert(address, std::time::Instant::now() + wait);
        }
    }

    /// Forgets addresses that have waited, and buckets that have refilled.
    pub fn forget_idle(&self) {
        let now = std::time::Instant::now();
        self.blocked.retain(|_, until| *until > now);
        let mut limiter = self.limiter.write().unwrap_or_else(|p| p.into_inner());
        limiter.retain_recent();
        if limiter.len() > FAILED_AUTH_ADDRESSES {
            // Too many addresses at once to remember: start afresh rather than grow.
            *limiter = RateLimiter::keyed(self.quota);
        }
    }
}

/// The limits every request passes.
pub struct Limits {
    default_bucket: Bucket,
    default_daily_quota: Option<i64>,
    /// Failed authentications per client address.
    pub auth_failures: AuthFailures,
    keys: DashMap<Arc<str>, KeyBucket>,
    /// Per subject and day (days since the Unix epoch, UTC): the day that ended stays until its count is stored.
    daily: DashMap<(Subject, i64), Arc<DailyCount>>,
}

impl Limits {
    pub fn new(default_bucket: Bucket, default_daily_quota: Option<i64>) -> Self {
        Self {
            default_bucket,
            default_daily_quota,
            keys: DashMap::new(),
            daily: DashMap::new(),
            auth_failures: AuthFailures::default(),
        }
    }

    /// Takes a token from the caller's bucket and counts the request against its daily quota.
    pub fn admit(&self, principal: &Principal, now: i64) -> Result<(), GatewayError> {
        let key: Arc<str> = principal.key_id.clone().unwrap_or_else(|| principal.user.clone());
        let bucket = Bucket {
            per_second: principal.rate_per_second.unwrap_or(self.default_bucket.per_second),
            burst: principal.burst.unwrap_or(self.default_bucket.burst),
        };
        let waited = {
            let entry = self.keys.entry(key.clone());
            let limiter = match entry {
                dashmap::Entry::Occupied(mut occupied) => {
                    if occupied.get().bucket != bucket {
                        // The key's limits were changed: start a bucket with the new ones.
                        if let Some(quota) = bucket.quota() {
                            occupied.insert(KeyBucket {
                                bucket,
                                limiter: RateLimiter::direct(quota),
                            });
                        }
                    }
                    occupied.into_ref()
                }
                dashmap::Entry::Vacant(vacant) => match bucket.quota() {
                    Some(quota) => vacant.insert(KeyBucket {
                        bucket,
                        limiter: RateLimiter::direct(quota),
                    }),
                    None => return self.count_daily(principal, now),
                },
            };
            limiter
                .limiter
                .check()
                .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
        };
        if let Err(retry_after) = waited {
            metrics::counter!("airq_gateway_rate_limited_total", "limit" => "key").increment(1);
            return Err(GatewayError::RateLimited {
                what: format!(
                    "{} is over its rate limit of {} requests per second (burst {})",
                    describe(principal),
                    bucket.per_second,
                    bucket.burst
                ),
                retry_after,
            });
        }
        self.count_daily(principal, now)
    }

    fn count_daily(&self, principal: &Principal, now: i64) -> Result<(), GatewayError> {
        let quota = principal.daily_quota.or(self.default_daily_quota);
        // Keys' usage is always counted (the admin API shows it). Tokens have no stored usage: their quota, when
        // there is one, is counted per subject in this replica.
        if quota.is_none() && principal.key_id.is_none() {
            return Ok(());
        }
        let today = now.div_euclid(86_400);
        let count = self
            .daily
            .entry((Subject::of(principal), today))
            .or_insert_with(|| {
                Arc::new(DailyCount {
                    stored: AtomicI64::new(principal.used_today),
                    pending: AtomicI64::new(0),
                })
            })
            .clone();
        let used = count.stored.load(Ordering::Relaxed) + count.pending.load(Ordering::Relaxed);
        if let Some(quota) = quota
            && used >= quota
        {
            metrics::counter!("airq_gateway_rate_limited_total", "limit" => "daily_quota").increment(1);
            return Err(GatewayError::RateLimited {
                what: format!("{} has used its daily quota of {quota} requests", describe(principal)),
                retry_after: Duration::from_secs(u64::try_from(86_400 - now.rem_euclid(86_400)).unwrap_or(1)),
            });
        }
        count.pending.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Adds this replica's counts to the database and learns the totals. Counts of tokens (no stored key) stay
    /// local. A day that ended is forgotten once its count is stored; the count of a key deleted meanwhile is
    /// dropped (there is nothing left to count it against), never retried.
    pub async fn flush(&self, store: &Store, now: i64) {
        let today = now.div_euclid(86_400);
        let entries: Vec<((Subject, i64), Arc<DailyCount>)> = self
            .daily
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        for ((subject, day), count) in entries {
            let pending = count.pending.swap(0, Ordering::Relaxed);
            if pending == 0 {
                if day < today {
                    self.daily.remove(&(subject, day));
                }
                continue;
            }
            let key_id = match &subject {
                Subject::Token(_) => {
                    count.stored.fetch_add(pending, Ordering::Relaxed);
                    continue;
                }
                Subject::Key(id) => id,
            };
            match store.add_usage(key_id, &day_of(day * 86_400), pending, now).await {
                Ok(Some(total)) => count.stored.store(total, Ordering::Relaxed),
                Ok(None) => {
                    tracing::debug!(%key_id, pending, "the key was deleted: its last requests are not counted");
                    self.daily.remove(&(subject, day));
                }
                Err(e) => {
                    // Kept for the next flush rather than lost.
                    count.pending.fetch_add(pending, Ordering::Relaxed);
                    tracing::warn!(error = %e, %key_id, "cannot store a key's usage; will retry");
                }
            }
        }
    }

    /// Forgets the buckets of keys that have not been used lately.
    pub fn forget_idle(&self) {
        self.keys.retain(|_, bucket| {
            // A bucket that could give its whole burst is full: forgetting it changes nothing for its caller (the
            // probe takes the tokens, but the bucket goes with them).
            let burst = NonZeroU32::new(bucket.bucket.burst.max(1)).unwrap_or(NonZeroU32::MIN);
            !matches!(bucket.limiter.check_n(burst), Ok(Ok(())))
        });
    }
}

fn describe(principal: &Principal) -> String {
    match &principal.key_id {
        Some(id) => format!("API key airq_{id}…"),
        None => principal.user.to_string(),
    }
}

/// Every few seconds, stores usage counts; about every minute, forgets idle buckets: keys', routes' per caller, and
/// failed authentications' per address.
pub async fn flush_forever(limits: Arc<Limits>, routes: Arc<crate::routes::Routes>, store: Store, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    let per_minute = (60 / every.as_secs().max(1)).max(1);
    let mut ticks = 0u64;
    loop {
        ticker.tick().await;
        limits.flush(&store, chrono::Utc::now().timestamp()).await;
        ticks += 1;
        if ticks.is_multiple_of(per_minute) {
            forget_idle(&limits, &routes);
        }
    }
}

/// Forgets every bucket that has refilled.
pub fn forget_idle(limits: &Limits, routes: &crate::routes::Routes) {
    limits.forget_idle();
    limits.auth_failures.forget_idle();
    for entry in &routes.current().entries {
        if let Some(limiter) = &entry.limiter {
            limiter.forget_idle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_buckets_of_callers_not_seen_lately_are_forgotten() {
        let limiter = RouteLimiter::new(Bucket {
            per_second: 1_000.0,
            burst: 5,
        })
        .unwrap_or_else(|| panic!("a valid bucket"));
        for i in 0..1_000 {
            assert!(limiter.check(&format!("ip:198.18.{}.{}", i / 256, i % 256)).is_ok());
        }
        assert_eq!(limiter.callers(), 1_000);
        // A few milliseconds later every bucket has refilled: nothing is left to remember.
        std::thread::sleep(Duration::from_millis(20));
        limiter.forget_idle();
        assert_eq!(limiter.callers(), 0);
    }

    #[test]
    fn failed_authentications_from_one_address_are_limited_and_others_are_not() {
        let failures = AuthFailures::default();
        let attacker = std::net::IpAddr::from([198, 18, 0, 7]);
        let other = std::net::IpAddr::from([198, 18, 0, 8]);
        for _ in 0..FAILED_AUTH_BURST {
            assert!(failures.may_try(attacker).is_ok());
            failures.failed(attacker);
        }
        failures.failed(attacker);
        let wait = failures.may_try(attacker).err().unwrap_or_default();
        assert!(!wait.is_zero() && wait <= Duration::from_millis(FAILED_AUTH_PERIOD_MS));
        assert!(failures.may_try(other).is_ok());
        std::thread::sleep(wait + Duration::from_millis(5));
        assert!(failures.may_try(attacker).is_ok());
    }
}
