//! Token buckets per (identity, rule): `requestsPerSecond` sustained, `burst` at once.
//! A refused request learns when a token will be there (`Retry-After`).
//!
//! Buckets live in a sharded map so that concurrent requests rarely wait on one lock,
//! and the map is bounded: when a shard is full, buckets that have refilled completely
//! (they carry no state a new bucket would not) are dropped first, then the least
//! recently used eighth of the shard. A new caller always gets a bucket: a full table
//! must not let many source addresses shut out everyone new.
//!
//! Anonymous callers are keyed by address: an IPv4 address, or the /64 an IPv6 address
//! is in (one host or site gets a whole /64 and could rotate through it).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use portcullis_wire::RateLimit;

const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The rate limiter of one sidecar.
pub struct Limiter {
    shards: Vec<Mutex<HashMap<(String, String), Bucket>>>,
    per_shard: usize,
    hasher: RandomState,
}

impl Limiter {
    /// A limiter holding at most about `max_buckets` buckets.
    pub fn new(max_buckets: usize) -> Limiter {
        Limiter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: max_buckets.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
        }
    }

    /// Takes a token for `identity` under `rule`'s `limit` at `now`, or says how long
    /// until one is there.
    pub fn check(&self, identity: &str, rule: &str, limit: &RateLimit, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(limit.requests_per_second.max(1));
        let burst = f64::from(limit.burst.unwrap_or(limit.requests_per_second).max(1));
        let key = (identity.to_string(), rule.to_string());
        let shard = &self.shards[(self.hasher.hash_one(&key) as usize) % SHARDS];
        let mut buckets = match shard.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        if buckets.len() >= self.per_shard && !buckets.contains_key(&key) {
            // Full buckets hold nothing a fresh bucket would not: forget them first.
            buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate < burst);
            if buckets.len() >= self.per_shard {
                evict_least_recent(&mut buckets);
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

/// Drops the least recently used eighth of a full shard (at least one bucket), so that
/// the scan is paid once per eighth of a shard's new callers, not once per caller.
fn evict_least_recent(buckets: &mut HashMap<(String, String), Bucket>) {
    let mut ages: Vec<Instant> = buckets.values().map(|b| b.updated).collect();
    if ages.is_empty() {
        return;
    }
    let victims = (ages.len() / 8).max(1);
    let (_, &mut cutoff, _) = ages.select_nth_unstable(victims - 1);
    let mut left = victims;
    buckets.retain(|_, b| {
        if left > 0 && b.updated <= cutoff {
            left -= 1;
            false
        } else {
            true
        }
    });
}

/// The rate-limit identity of an anonymous caller: its IPv4 address, or the /64 of its
/// IPv6 address (an IPv4-mapped IPv6 address is the IPv4 address it maps).
pub fn anonymous_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("ip:{v4}"),
            None => {
                let s = v6.segments();
                format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// `Retry-After` in whole seconds, never 0 (a client told 0 would retry at once).
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rps: u32, burst: Option<u32>) -> RateLimit {
        RateLimit {
            requests_per_second: rps,
            burst,
        }
    }

    #[test]
    fn burst_then_refill_at_the_sustained_rate() {
        let limiter = Limiter::new(1000);
        let t0 = Instant::now();
        let l = limit(2, Some(4));
        for _ in 0..4 {
            assert!(limiter.check("bob", "read", &l, t0).is_ok());
        }
        let wait = limiter.check("bob", "read", &l, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert_eq!(retry_after_secs(wait), 1);
        // Half a second later one token is back, not more.
        let t1 = t0 + Duration::from_millis(500);
        assert!(limiter.check("bob", "read", &l, t1).is_ok());
        assert!(limiter.check("bob", "read", &l, t1).is_err());
        // Other identities and other rules have buckets of their own.
        assert!(limiter.check("alice", "read", &l, t1).is_ok());
        assert!(limiter.check("bob", "write", &l, t1).is_ok());
    }

    #[test]
    fn burst_defaults_to_the_rate_and_a_bucket_never_overfills() {
        let limiter = Limiter::new(1000);
        let t0 = Instant::now();
        let l = limit(3, None);
        let later = t0 + Duration::from_secs(3600);
        let allowed = (0..10).filter(|_| limiter.check("k", "r", &l, later).is_ok()).count();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn the_map_stays_bounded_and_a_full_table_still_takes_new_callers() {
        let limiter = Limiter::new(SHARDS * 8); // eight buckets per shard
        let t0 = Instant::now();
        let l = limit(1, Some(1));
        // Many callers, each active (their one token spent), all within the same second.
        for i in 0..2_000 {
            let _ = limiter.check(&format!("caller-{i}"), "r", &l, t0 + Duration::from_micros(i));
        }
        let held: usize = limiter.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= SHARDS * 8, "{held} buckets held");
        // A newcomer is served at once, however full the table is of active callers.
        let now = t0 + Duration::from_millis(3);
        for i in 0..200 {
            assert!(limiter.check(&format!("new-{i}"), "r", &l, now).is_ok(), "new-{i}");
        }
        // The most recent callers kept their buckets (and their spent tokens).
        assert!(limiter.check("new-199", "r", &l, now).is_err());
    }

    #[test]
    fn anonymous_callers_are_keyed_by_address_and_ipv6_by_its_64() {
        let key = |s: &str| anonymous_key(s.parse().unwrap());
        assert_eq!(key("192.0.2.7"), "ip:192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "ip:192.0.2.7");
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff:ffff:ffff:fffe"));
        assert_eq!(key("2001:db8:1:2::1"), "ip:2001:db8:1:2::/64");
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
    }
}
