//! Brute-force throttling of token guessing: too many failed handshakes from one client address
//! within a window and that address gets `429` until the window ends.
//!
//! A fixed window per address is enough here: it bounds guesses per window, costs one hash
//! lookup per handshake, and is easy to explain in `Retry-After`. IPv6 clients are keyed by
//! their /64, since one host usually owns a whole /64 and could otherwise rotate addresses. The
//! table is bounded; when it is full, expired windows are pruned first and then the oldest entry
//! goes, so memory stays flat under a spray of source addresses.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Addresses tracked at once: about 5 MiB at worst, far more than legitimate traffic needs.
const MAX_TRACKED: usize = 100_000;

pub struct Throttle {
    limit: u32,
    window: Duration,
    windows: Mutex<HashMap<IpAddr, Window>>,
}

#[derive(Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

impl Throttle {
    /// `limit` failures per `window`; a limit of 0 turns throttling off.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// How long `peer` must still wait, if it is throttled now.
    pub fn blocked_for(&self, peer: IpAddr) -> Option<Duration> {
        if self.limit == 0 {
            return None;
        }
        let windows = self
            .windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let window = windows.get(&key(peer))?;
        let ends = window.started + self.window;
        let now = Instant::now();
        (window.failures > self.limit && ends > now).then(|| ends - now)
    }

    /// Counts one failed handshake from `peer`.
    pub fn record_failure(&self, peer: IpAddr) {
        if self.limit == 0 {
            return;
        }
        let now = Instant::now();
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if windows.len() >= MAX_TRACKED && !windows.contains_key(&key(peer)) {
            windows.retain(|_, window| window.started + self.window > now);
            if windows.len() >= MAX_TRACKED {
                let oldest = windows
                    .iter()
                    .min_by_key(|(_, w)| w.started)
                    .map(|(ip, _)| *ip);
                if let Some(oldest) = oldest {
                    windows.remove(&oldest);
                }
            }
        }
        let window = windows.entry(key(peer)).or_insert(Window {
            started: now,
            failures: 0,
        });
        if window.started + self.window <= now {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }
}

/// IPv4 (and IPv4-mapped IPv6) addresses count alone; IPv6 addresses count per /64.
fn key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let [a, b, c, d, ..] = v6.segments();
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn blocks_after_the_limit_until_the_window_ends() {
        let throttle = Throttle::new(3, Duration::from_secs(60));
        let peer = ip("192.0.2.7");
        for _ in 0..3 {
            throttle.record_failure(peer);
        }
        assert_eq!(
            throttle.blocked_for(peer),
            None,
            "the limit itself is allowed"
        );
        throttle.record_failure(peer);
        assert_eq!(throttle.blocked_for(peer), Some(Duration::from_secs(60)));
        assert_eq!(
            throttle.blocked_for(ip("192.0.2.8")),
            None,
            "other addresses are unaffected"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(throttle.blocked_for(peer), None);
        throttle.record_failure(peer);
        assert_eq!(
            throttle.blocked_for(peer),
            None,
            "a new window starts from zero"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_neighbours_in_one_64_share_a_window() {
        let throttle = Throttle::new(1, Duration::from_secs(10));
        throttle.record_failure(ip("2001:db8::1"));
        throttle.record_failure(ip("2001:db8::2"));
        assert!(throttle.blocked_for(ip("2001:db8::ffff")).is_some());
        assert!(throttle.blocked_for(ip("2001:db8:0:1::1")).is_none());
    }

    #[test]
    fn zero_limit_turns_it_off() {
        let throttle = Throttle::new(0, Duration::from_secs(10));
        for _ in 0..100 {
            throttle.record_failure(ip("192.0.2.1"));
        }
        assert_eq!(throttle.blocked_for(ip("192.0.2.1")), None);
    }
}
