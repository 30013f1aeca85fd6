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

/// Today's count for one key: what the database said at the last flush, plus what this replica served since.
struct DailyCount {
    /// Days since the Unix epoch, UTC (formatted only when stored).
    day: i64,
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
}

/// The limits every request passes.
pub struct Limits {
    default_bucket: Bucket,
    default_daily_quota: Option<i64>,
    keys: DashMap<Arc<str>, KeyBucket>,
    daily: DashMap<Arc<str>, Arc<DailyCount>>,
}

impl Limits {
    pub fn new(default_bucket: Bucket, default_daily_quota: Option<i64>) -> Self {
        Self {
            default_bucket,
            default_daily_quota,
            keys: DashMap::new(),
            daily: DashMap::new(),
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
                    None => return self.count_daily(principal, &key, now),
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
        self.count_daily(principal, &key, now)
    }

    fn count_daily(&self, principal: &Principal, key: &Arc<str>, now: i64) -> Result<(), GatewayError> {
        let quota = principal.daily_quota.or(self.default_daily_quota);
        // Keys' usage is always counted (the admin API shows it). Tokens have no stored usage: their quota, when
        // there is one, is counted per subject in this replica.
        if quota.is_none() && principal.key_id.is_none() {
            return Ok(());
        }
        let today = now.div_euclid(86_400);
        let count = {
            let entry = self.daily.entry(key.clone()).or_insert_with(|| {
                Arc::new(DailyCount {
                    day: today,
                    stored: AtomicI64::new(principal.used_today),
                    pending: AtomicI64::new(0),
                })
            });
            if entry.day != today {
                // A new day: what is pending belongs to yesterday and is flushed under its own day.
                drop(entry);
                let fresh = Arc::new(DailyCount {
                    day: today,
                    stored: AtomicI64::new(0),
                    pending: AtomicI64::new(0),
                });
                let old = self.daily.insert(key.clone(), fresh.clone());
                if let Some(old) = old {
                    self.daily.insert(format!("{key}@{}", old.day).into(), old);
                }
                fresh
            } else {
                entry.clone()
            }
        };
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
    /// local.
    pub async fn flush(&self, store: &Store, now: i64) {
        let entries: Vec<(Arc<str>, Arc<DailyCount>)> = self
            .daily
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        for (name, count) in entries {
            let key_id = name.split('@').next().unwrap_or_default();
            let pending = count.pending.swap(0, Ordering::Relaxed);
            if pending == 0 {
                if name.contains('@') {
                    self.daily.remove(&name);
                }
                continue;
            }
            if key_id.starts_with("jwt:") {
                count.stored.fetch_add(pending, Ordering::Relaxed);
                continue;
            }
            match store.add_usage(key_id, &day_of(count.day * 86_400), pending, now).await {
                Ok(total) => count.stored.store(total, Ordering::Relaxed),
                Err(e) => {
                    // Kept for the next flush rather than lost.
                    count.pending.fetch_add(pending, Ordering::Relaxed);
                    tracing::warn!(error = %e, key_id, "cannot store a key's usage; will retry");
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

/// Every few seconds, stores usage counts; every minute, forgets idle buckets.
pub async fn flush_forever(limits: Arc<Limits>, store: Store, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    let mut ticks = 0u64;
    loop {
        ticker.tick().await;
        limits.flush(&store, chrono::Utc::now().timestamp()).await;
        ticks += 1;
        if ticks.is_multiple_of(60) {
            limits.forget_idle();
        }
    }
}
