//! The per-connection send queue of SPEC §6: room events waiting for one member's socket.
//!
//! The hub pushes without ever waiting (`try_push`), and a full queue is the slow-consumer
//! signal. The connection takes everything queued in one step (`next_batch` swaps the whole
//! buffer out under one short lock), which is what lets it write a whole batch before a single
//! flush. The same queue carries the hub's verdict (`kick`), so a connection waits on one thing.
//!
//! Why not `tokio::sync::mpsc`: its blocks are allocated up front and kept (about 1-2 KiB per
//! connection even when idle), and it hands items over one at a time. Here an idle connection
//! costs a few dozen bytes, and a buffer that grew during a burst is shrunk again afterwards.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Why the hub drops a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// Its send queue filled up: it does not read fast enough.
    SlowConsumer,
}

/// A drained buffer keeps at most this many slots of capacity: enough for the usual trickle
/// without reallocating, small enough that a burst's buffer does not stay with an idle member.
const RETAINED_CAPACITY: usize = 8;

/// What the connection gets from [`EventQueue::next_batch`].
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Events are waiting; read them from [`EventQueue::batch`].
    Events,
    /// The hub removed this member.
    Kicked(Kick),
    /// The producer side is gone (the member left the room) and nothing is left.
    Closed,
}

struct Shared {
    state: Mutex<State>,
    /// The connection task, woken on a push, a kick or the producer going away.
    waker: AtomicWaker,
    capacity: usize,
}

#[derive(Default)]
struct State {
    events: VecDeque<Utf8Bytes>,
    kicked: Option<Kick>,
    producer_gone: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a queue and two flags; a panic elsewhere cannot leave it inconsistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A bounded queue of `capacity` events: the hub's [`EventSender`] and the connection's
/// [`EventQueue`].
pub fn event_queue(capacity: usize) -> (EventSender, EventQueue) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        waker: AtomicWaker::new(),
        capacity,
    });
    (
        EventSender {
            shared: Arc::clone(&shared),
        },
        EventQueue {
            shared,
            batch: VecDeque::new(),
        },
    )
}

/// The hub's end.
pub struct EventSender {
    shared: Arc<Shared>,
}

/// The queue was full; the event was not queued.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl EventSender {
    /// Queues `event` unless `capacity` events are already waiting. Returns how many are
    /// waiting now, so the hub can tell a queue that is filling up.
    pub fn try_push(&self, event: Utf8Bytes) -> Result<usize, Full> {
        let mut state = self.shared.lock();
        if state.events.len() >= self.shared.capacity {
            return Err(Full);
        }
        let was_empty = state.events.is_empty();
        state.events.push_back(event);
        let waiting = state.events.len();
        drop(state);
        // A non-empty queue has already woken the connection, which has not drained it yet.
        if was_empty {
            self.shared.waker.wake();
        }
        Ok(waiting)
    }

    /// Queues several events at once, with one lock and at most one wake-up: a cluster node
    /// hands its members what arrived from Redis together. `Full` if they do not all fit (those
    /// that did stay queued; a full queue gets its member removed anyway).
    pub fn try_push_all(&self, events: &[Utf8Bytes]) -> Result<usize, Full> {
        let mut state = self.shared.lock();
        let was_empty = state.events.is_empty();
        let mut outcome = Ok(0);
        for event in events {
            if state.events.len() >= self.shared.capacity {
                outcome = Err(Full);
                break;
            }
            state.events.push_back(event.clone());
        }
        let waiting = state.events.len();
        drop(state);
        if was_empty && waiting > 0 {
            self.shared.waker.wake();
        }
        outcome.map(|_| waiting)
    }

    /// Whether `waiting` events fill at least half of this queue.
    pub fn is_half_full(&self, waiting: usize) -> bool {
        waiting * 2 >= self.shared.capacity
    }

    /// Tells the connection it was removed from the room.
    pub fn kick(&self, reason: Kick) {
        self.shared.lock().kicked = Some(reason);
        self.shared.waker.wake();
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        self.shared.lock().producer_gone = true;
        self.shared.waker.wake();
    }
}

/// The connection's end.
pub struct EventQueue {
    shared: Arc<Shared>,
    /// The events taken by the last `next_batch`, oldest first.
    batch: VecDeque<Utf8Bytes>,
}

impl EventQueue {
    /// Waits until events are queued, the member is kicked, or the producer is gone. A kick
    /// wins over waiting events: a kicked member gets no more events.
    pub async fn next_batch(&mut self) -> Next {
        poll_fn(|cx| self.poll_next_batch(cx)).await
    }

    fn poll_next_batch(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        self.recycle_batch();
        // Register before looking, so a push between the look and the return still wakes us.
        self.shared.waker.register(cx.waker());
        let mut state = self.shared.lock();
        if let Some(kick) = state.kicked {
            return Poll::Ready(Next::Kicked(kick));
        }
        if !state.events.is_empty() {
            std::mem::swap(&mut state.events, &mut self.batch);
            return Poll::Ready(Next::Events);
        }
        if state.producer_gone {
            return Poll::Ready(Next::Closed);
        }
        Poll::Pending
    }

    /// Resolves when the hub kicks this member; for waiting on while a write is blocked.
    pub async fn kicked(&self) -> Kick {
        poll_fn(|cx| {
            self.shared.waker.register(cx.waker());
            match self.shared.lock().kicked {
                Some(kick) => Poll::Ready(kick),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// The events of the last batch, to be taken with `pop_front`.
    pub fn batch(&mut self) -> &mut VecDeque<Utf8Bytes> {
        &mut self.batch
    }

    /// Empties the previous batch and trims a buffer that a burst made large.
    fn recycle_batch(&mut self) {
        self.batch.clear();
        if self.batch.capacity() > RETAINED_CAPACITY {
            self.batch.shrink_to(RETAINED_CAPACITY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(text: &str) -> Utf8Bytes {
        Utf8Bytes::from(text.to_owned())
    }

    #[tokio::test]
    async fn batches_come_out_in_order() {
        let (sender, mut queue) = event_queue(8);
        for text in ["a", "b", "c"] {
            sender.try_push(event(text)).unwrap();
        }
        assert_eq!(queue.next_batch().await, Next::Events);
        let texts: Vec<String> = queue.batch().drain(..).map(|e| e.to_string()).collect();
        assert_eq!(texts, ["a", "b", "c"]);
        sender.try_push(event("d")).unwrap();
        assert_eq!(queue.next_batch().await, Next::Events);
        assert_eq!(queue.batch().pop_front().unwrap().as_str(), "d");
    }

    #[test]
    fn a_full_queue_refuses() {
        let (sender, _queue) = event_queue(2);
        sender.try_push(event("1")).unwrap();
        sender.try_push(event("2")).unwrap();
        assert_eq!(sender.try_push(event("3")), Err(Full));
        assert!(sender.is_half_full(1));
    }

    #[tokio::test]
    async fn a_kick_wins_over_waiting_events() {
        let (sender, mut queue) = event_queue(8);
        sender.try_push(event("x")).unwrap();
        sender.kick(Kick::SlowConsumer);
        assert_eq!(queue.next_batch().await, Next::Kicked(Kick::SlowConsumer));
        assert_eq!(queue.kicked().await, Kick::SlowConsumer);
    }

    #[tokio::test]
    async fn a_push_wakes_a_waiting_consumer() {
        let (sender, mut queue) = event_queue(8);
        let waiting = tokio::spawn(async move {
            let next = queue.next_batch().await;
            (next, queue.batch().len())
        });
        tokio::task::yield_now().await;
        sender.try_push(event("late")).unwrap();
        assert_eq!(waiting.await.unwrap(), (Next::Events, 1));
    }

    #[tokio::test]
    async fn closed_once_the_sender_is_gone_and_drained() {
        let (sender, mut queue) = event_queue(8);
        sender.try_push(event("last")).unwrap();
        drop(sender);
        assert_eq!(queue.next_batch().await, Next::Events);
        assert_eq!(queue.next_batch().await, Next::Closed);
    }

    #[tokio::test]
    async fn a_large_batch_buffer_is_trimmed_afterwards() {
        let (sender, mut queue) = event_queue(1024);
        for n in 0..500 {
            sender.try_push(event(&n.to_string())).unwrap();
        }
        assert_eq!(queue.next_batch().await, Next::Events);
        sender.try_push(event("one more")).unwrap();
        assert_eq!(queue.next_batch().await, Next::Events);
        assert!(queue.batch.capacity() <= RETAINED_CAPACITY * 2);
    }
}
