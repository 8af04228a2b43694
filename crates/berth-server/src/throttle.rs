//! Failed logins at the token endpoint slow down whoever makes them, per account and per
//! client address: after a few free failures, each further failure locks the key out for
//! twice as long as the last (1 s, 2 s, 4 s, ... up to [`MAX_DELAY`]; `auth.issuer.throttle`
//! sets the free failures and the longest delay). A locked-out request is
//! answered 429 with `Retry-After` before any password is hashed, so guessing costs the
//! guesser time and the registry no CPU. A success clears the account and the address.
//!
//! Addresses get more free failures than accounts: behind NAT or a load balancer many users
//! share one. Memory is bounded: each map keeps at most [`CAPACITY`] keys, evicting first keys
//! whose last failure is older than [`FORGET_AFTER`], then the stalest.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures of one account before the first delay.
pub const ACCOUNT_FREE: u32 = 5;
/// Failures from one address before the first delay.
pub const ADDRESS_FREE: u32 = 20;
/// The first delay; each further failure doubles it.
const BASE_DELAY: Duration = Duration::from_secs(1);
/// The longest delay.
pub const MAX_DELAY: Duration = Duration::from_secs(300);
/// A key whose last failure is this old starts over.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Keys kept per map.
const CAPACITY: usize = 10_000;

struct Entry {
    failures: u32,
    until: Instant,
    last: Instant,
}

struct Window {
    free: u32,
    max: Duration,
    keys: HashMap<String, Entry>,
}

impl Window {
    fn new(free: u32, max: Duration) -> Window {
        Window {
            free,
            max,
            keys: HashMap::new(),
        }
    }

    fn wait(&self, key: &str, now: Instant) -> Option<Duration> {
        let e = self.keys.get(key)?;
        (e.until > now).then(|| e.until - now)
    }

    /// Records a failure; returns the lock-out it starts, if any.
    fn fail(&mut self, key: &str, now: Instant) -> Option<Duration> {
        if !self.keys.contains_key(key) && self.keys.len() >= CAPACITY {
            self.keys
                .retain(|_, e| now.duration_since(e.last) < FORGET_AFTER);
            if self.keys.len() >= CAPACITY {
                let stalest = self
                    .keys
                    .iter()
                    .min_by_key(|(_, e)| e.last)
                    .map(|(k, _)| k.clone());
                if let Some(k) = stalest {
                    self.keys.remove(&k);
                }
            }
        }
        let e = self.keys.entry(key.to_owned()).or_insert(Entry {
            failures: 0,
            until: now,
            last: now,
        });
        if now.duration_since(e.last) >= FORGET_AFTER {
            e.failures = 0;
        }
        e.failures += 1;
        e.last = now;
        let over = e.failures.checked_sub(self.free.saturating_add(1))?;
        let delay = BASE_DELAY
            .checked_mul(1u32.checked_shl(over).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max);
        if delay.is_zero() {
            return None;
        }
        e.until = now + delay;
        Some(delay)
    }
}

/// Why a login attempt must wait, and how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    /// `account` or `address`.
    pub by: &'static str,
    pub retry_after: Duration,
}

/// The throttle of one token endpoint.
pub struct Throttle {
    accounts: Mutex<Window>,
    addresses: Mutex<Window>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(ACCOUNT_FREE, ADDRESS_FREE, MAX_DELAY)
    }
}

impl Throttle {
    /// Free failures per account and per address, and the longest delay (zero: no delays).
    pub fn new(account_free: u32, address_free: u32, max_delay: Duration) -> Throttle {
        Throttle {
            accounts: Mutex::new(Window::new(account_free, max_delay)),
            addresses: Mutex::new(Window::new(address_free, max_delay)),
        }
    }
}

fn lock(m: &Mutex<Window>) -> std::sync::MutexGuard<'_, Window> {
    // Every update leaves the map consistent; a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Throttle {
    /// Whether a login as `account` from `address` must wait first.
    pub fn check(&self, account: &str, address: Option<&str>) -> Option<Wait> {
        let now = Instant::now();
        let by_account = lock(&self.accounts).wait(account, now).map(|d| Wait {
            by: "account",
            retry_after: d,
        });
        let by_address = address
            .and_then(|a| lock(&self.addresses).wait(a, now))
            .map(|d| Wait {
                by: "address",
                retry_after: d,
            });
        match (by_account, by_address) {
            (Some(a), Some(b)) => Some(if a.retry_after >= b.retry_after { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// Records a failed login; returns the lock-out it starts, if any (for one WARN).
    pub fn failed(&self, account: &str, address: Option<&str>) -> Option<Wait> {
        let now = Instant::now();
        let by_account = lock(&self.accounts).fail(account, now).map(|d| Wait {
            by: "account",
            retry_after: d,
        });
        let by_address = address
            .and_then(|a| lock(&self.addresses).fail(a, now))
            .map(|d| Wait {
                by: "address",
                retry_after: d,
            });
        by_account.or(by_address)
    }

    /// A successful login clears the account and the address.
    pub fn succeeded(&self, account: &str, address: Option<&str>) {
        lock(&self.accounts).keys.remove(account);
        if let Some(a) = address {
            lock(&self.addresses).keys.remove(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_after_the_free_failures_and_success_clears() {
        let t = Throttle::default();
        for _ in 0..ACCOUNT_FREE {
            assert_eq!(t.failed("alice", Some("10.0.0.1")), None);
            assert_eq!(t.check("alice", Some("10.0.0.1")), None);
        }
        let first = t
            .failed("alice", Some("10.0.0.1"))
            .unwrap_or_else(|| panic!("no delay"));
        assert_eq!((first.by, first.retry_after), ("account", BASE_DELAY));
        let second = t
            .failed("alice", Some("10.0.0.1"))
            .unwrap_or_else(|| panic!("no delay"));
        assert_eq!(second.retry_after, BASE_DELAY * 2);
        assert!(t.check("alice", None).is_some());
        // Another account from the same address is not held up yet.
        assert_eq!(t.check("bob", Some("10.0.0.1")), None);
        t.succeeded("alice", Some("10.0.0.1"));
        assert_eq!(t.check("alice", Some("10.0.0.1")), None);
    }

    #[test]
    fn an_address_is_throttled_across_accounts_and_delays_are_capped() {
        let t = Throttle::default();
        for i in 0..ADDRESS_FREE {
            t.failed(&format!("user{i}"), Some("10.0.0.9"));
        }
        let w = t
            .failed("someone", Some("10.0.0.9"))
            .unwrap_or_else(|| panic!("no delay"));
        assert_eq!(w.by, "address");
        assert_eq!(
            t.check("fresh", Some("10.0.0.9")).map(|w| w.by),
            Some("address")
        );
        let mut last = Duration::ZERO;
        for _ in 0..40 {
            if let Some(w) = t.failed("mallory", None) {
                last = w.retry_after;
            }
        }
        assert_eq!(last, MAX_DELAY);
    }

    #[test]
    fn memory_is_bounded() {
        let t = Throttle::default();
        for i in 0..CAPACITY + 500 {
            t.failed(&format!("u{i}"), Some(&format!("a{i}")));
        }
        assert!(lock(&t.accounts).keys.len() <= CAPACITY);
        assert!(lock(&t.addresses).keys.len() <= CAPACITY);
    }

    #[test]
    fn configured_limits_apply_and_zero_disables() {
        let t = Throttle::new(1, 100, Duration::from_secs(2));
        assert_eq!(t.failed("a", None), None);
        let delays: Vec<Duration> = (0..4)
            .filter_map(|_| t.failed("a", None))
            .map(|w| w.retry_after)
            .collect();
        assert_eq!(
            delays,
            [BASE_DELAY, BASE_DELAY * 2, BASE_DELAY * 2, BASE_DELAY * 2]
        );
        let off = Throttle::new(0, 0, Duration::ZERO);
        for _ in 0..50 {
            assert_eq!(off.failed("a", Some("10.0.0.1")), None);
        }
        assert_eq!(off.check("a", Some("10.0.0.1")), None);
    }
}
