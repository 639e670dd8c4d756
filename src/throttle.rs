//! Brute-force throttling of token guessing: too many failed handshakes from one client address
//! within a window and that address gets `429` until the window ends.
//!
//! A fixed window per address is enough here: it bounds guesses per window, costs one hash
//! lookup per handshake, and is easy to explain in `Retry-After`. IPv6 clients are keyed by
//! their /64, since one host usually owns a whole /64 and could otherwise rotate addresses. The
//! table is bounded: ended windows are forgotten as they expire and, when it is full, the oldest
//! goes, each in constant time, so a spray of source addresses costs neither memory nor CPU.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Addresses tracked at once: about 5 MiB at worst, far more than legitimate traffic needs.
const MAX_TRACKED: usize = 100_000;

pub struct Throttle {
    limit: u32,
    window: Duration,
    state: Mutex<Windows>,
}

#[derive(Default)]
struct Windows {
    by_address: HashMap<IpAddr, Window>,
    /// Window starts in the order they happened. An entry is stale once its address has
    /// started a newer window; stale entries are skipped when they reach the front. This
    /// makes expiring and evicting the oldest window O(1), however many addresses there are.
    starts: VecDeque<(Instant, IpAddr)>,
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
            state: Mutex::new(Windows::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        // A map of counters: a panic elsewhere cannot leave it inconsistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How long `peer` must still wait, if it is throttled now.
    pub fn blocked_for(&self, peer: IpAddr) -> Option<Duration> {
        if self.limit == 0 {
            return None;
        }
        let state = self.lock();
        let window = state.by_address.get(&key(peer))?;
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
        let address = key(peer);
        let mut state = self.lock();
        state.forget_expired(now, self.window);
        let current = state
            .by_address
            .get(&address)
            .filter(|window| window.started + self.window > now)
            .copied();
        let window = match current {
            Some(window) => window,
            None => {
                if state.by_address.len() >= MAX_TRACKED && !state.by_address.contains_key(&address)
                {
                    state.forget_oldest();
                }
                state.starts.push_back((now, address));
                Window {
                    started: now,
                    failures: 0,
                }
            }
        };
        state.by_address.insert(
            address,
            Window {
                failures: window.failures.saturating_add(1),
                ..window
            },
        );
    }
}

impl Windows {
    /// Drops every window that has ended.
    fn forget_expired(&mut self, now: Instant, length: Duration) {
        while let Some(&(started, address)) = self.starts.front() {
            if started + length > now {
                break;
            }
            self.starts.pop_front();
            if self
                .by_address
                .get(&address)
                .is_some_and(|w| w.started == started)
            {
                self.by_address.remove(&address);
            }
        }
    }

    /// Drops the oldest live window, to make room.
    fn forget_oldest(&mut self) {
        while let Some((started, address)) = self.starts.pop_front() {
            if self
                .by_address
                .get(&address)
                .is_some_and(|w| w.started == started)
            {
                self.by_address.remove(&address);
                return;
            }
        }
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

    #[tokio::test(start_paused = true)]
    async fn ended_windows_are_forgotten_and_a_full_table_drops_its_oldest() {
        let throttle = Throttle::new(1, Duration::from_secs(10));
        throttle.record_failure(ip("192.0.2.1"));
        tokio::time::advance(Duration::from_secs(11)).await;
        throttle.record_failure(ip("192.0.2.2"));
        assert_eq!(
            throttle.lock().by_address.len(),
            1,
            "the ended window was dropped"
        );

        for n in 0..MAX_TRACKED as u32 + 5 {
            throttle.record_failure(IpAddr::from(n.to_be_bytes()));
        }
        assert_eq!(throttle.lock().by_address.len(), MAX_TRACKED);
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
