//! Rooms: membership, message ordering, history and fan-out. The seam for a future backend.
//!
//! Connections talk to rooms only through `Hub`, `Reservation` and `Membership`; nothing else
//! knows how rooms are stored, so a multi-node backend can replace this module without touching
//! connection code.
//!
//! Ordering: a room's lock is held while a message gets its id and is pushed onto every
//! member's queue, so all members see one order. Pushing never waits (`try_send` on a bounded
//! queue); a member whose queue is full is removed and told to close as a slow consumer, so one
//! stalled reader can neither slow the room down nor grow memory.
//!
//! Each event is serialized once; the resulting `Utf8Bytes` is reference-counted, so every
//! recipient shares the same allocation.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::queue::{event_queue, EventQueue, EventSender, Full, Kick};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::handshake::Rejection;
use crate::metrics::Metrics;
use crate::protocol::{encode_welcome, ChatMessage, ServerEvent};

/// Limits the hub enforces.
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    pub history: usize,
    pub max_rooms: usize,
    pub send_queue: usize,
}

/// The room registry. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    registry: Mutex<Registry>,
    limits: HubLimits,
    metrics: Metrics,
    next_guest: AtomicU64,
    next_connection: AtomicU64,
}

struct Registry {
    rooms: HashMap<Arc<str>, Arc<Room>>,
    /// The highest next-id of any evicted room: a room created again starts from here, so a
    /// message id is never reused while the server runs.
    evicted_id_floor: u64,
}

struct Room {
    name: Arc<str>,
    state: Mutex<RoomState>,
}

struct RoomState {
    members: Vec<Member>,
    /// Names promised to handshakes that have not finished upgrading yet.
    reserved: HashSet<String>,
    next_id: u64,
    /// The room's recent `message` frames, exactly as broadcast: a welcome embeds these bytes.
    history: VecDeque<Utf8Bytes>,
    last_active: Instant,
}

struct Member {
    connection: u64,
    name: String,
    events: EventSender,
}

impl Hub {
    pub fn new(limits: HubLimits, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(HubInner {
                registry: Mutex::new(Registry {
                    rooms: HashMap::new(),
                    evicted_id_floor: 1,
                }),
                limits,
                metrics,
                next_guest: AtomicU64::new(1),
                next_connection: AtomicU64::new(1),
            }),
        }
    }

    /// Holds `name` (or a fresh `guest-<n>`) in `room` for a handshake about to be upgraded.
    /// Nobody sees the reservation; `Reservation::join` makes it a member.
    pub fn reserve(&self, room: &str, name: Option<String>) -> Result<Reservation, Rejection> {
        let mut registry = lock(&self.inner.registry);
        let room = match registry.rooms.get(room) {
            Some(existing) => Arc::clone(existing),
            None => self.create_room(&mut registry, room)?,
        };
        let mut state = lock(&room.state);
        let name = match name {
            Some(name) if state.is_taken(&name) => return Err(Rejection::NameTaken),
            Some(name) => name,
            None => loop {
                let guest = format!(
                    "guest-{}",
                    self.inner.next_guest.fetch_add(1, Ordering::Relaxed)
                );
                if !state.is_taken(&guest) {
                    break guest;
                }
            },
        };
        state.reserved.insert(name.clone());
        drop(state);
        Ok(Reservation {
            hub: self.clone(),
            room,
            name: Some(name),
        })
    }

    /// Whether `reserve` would succeed, without reserving or creating anything.
    pub fn check(&self, room: &str, name: Option<&str>) -> Result<(), Rejection> {
        let registry = lock(&self.inner.registry);
        match registry.rooms.get(room) {
            Some(existing) => match name {
                Some(name) if lock(&existing.state).is_taken(name) => Err(Rejection::NameTaken),
                _ => Ok(()),
            },
            None if registry.rooms.len() >= self.inner.limits.max_rooms
                && !registry.has_idle_room() =>
            {
                Err(Rejection::TooManyRooms)
            }
            None => Ok(()),
        }
    }

    fn create_room(&self, registry: &mut Registry, name: &str) -> Result<Arc<Room>, Rejection> {
        if registry.rooms.len() >= self.inner.limits.max_rooms {
            registry
                .evict_one_idle_room()
                .ok_or(Rejection::TooManyRooms)?;
        }
        let room = Arc::new(Room {
            name: Arc::from(name),
            state: Mutex::new(RoomState {
                members: Vec::new(),
                reserved: HashSet::new(),
                next_id: registry.evicted_id_floor,
                history: VecDeque::new(),
                last_active: Instant::now(),
            }),
        });
        registry
            .rooms
            .insert(Arc::clone(&room.name), Arc::clone(&room));
        Ok(room)
    }

    /// How many rooms the registry holds now.
    pub fn room_count(&self) -> usize {
        lock(&self.inner.registry).rooms.len()
    }
}

impl Registry {
    fn has_idle_room(&self) -> bool {
        self.rooms.values().any(|room| lock(&room.state).is_idle())
    }

    /// Drops the least recently active room that has no members and no reservations.
    fn evict_one_idle_room(&mut self) -> Option<()> {
        let (name, next_id) = self
            .rooms
            .iter()
            .filter_map(|(name, room)| {
                let state = lock(&room.state);
                state
                    .is_idle()
                    .then(|| (Arc::clone(name), state.next_id, state.last_active))
            })
            .min_by_key(|(_, _, last_active)| *last_active)
            .map(|(name, next_id, _)| (name, next_id))?;
        self.rooms.remove(&name);
        self.evicted_id_floor = self.evicted_id_floor.max(next_id);
        Some(())
    }
}

impl RoomState {
    fn is_taken(&self, name: &str) -> bool {
        self.reserved.contains(name) || self.members.iter().any(|member| member.name == name)
    }

    fn is_idle(&self) -> bool {
        self.members.is_empty() && self.reserved.is_empty()
    }

    fn member_names(&self) -> Vec<&str> {
        self.members
            .iter()
            .map(|member| member.name.as_str())
            .collect()
    }

    /// Queues `event` for every member; returns how many got it. Members whose queue is full
    /// are removed, told to close, and announced as having left; that is repeated until no
    /// announcement overflows another queue.
    fn broadcast(&mut self, room: &str, event: Utf8Bytes) -> Broadcast {
        let mut delivered = 0;
        let mut backlog = false;
        let mut overflowed = Vec::new();
        for member in &self.members {
            match member.events.try_push(event.clone()) {
                Ok(waiting) => {
                    delivered += 1;
                    backlog |= member.events.is_half_full(waiting);
                }
                Err(Full) => overflowed.push(member.connection),
            }
        }
        while let Some(connection) = overflowed.pop() {
            let Some(index) = self.members.iter().position(|m| m.connection == connection) else {
                continue;
            };
            let member = self.members.swap_remove(index);
            member.events.kick(Kick::SlowConsumer);
            let leave = encode(&ServerEvent::Leave {
                room: room.to_owned(),
                user: member.name,
                ts: now_millis(),
            });
            for other in &self.members {
                if other.events.try_push(leave.clone()).is_err() {
                    overflowed.push(other.connection);
                }
            }
        }
        Broadcast { delivered, backlog }
    }
}

/// A name held in a room between the handshake decision and the upgrade. Dropping it without
/// joining frees the name.
pub struct Reservation {
    hub: Hub,
    room: Arc<Room>,
    name: Option<String>,
}

/// What a connection gets when it joins.
pub struct Joined {
    pub membership: Membership,
    /// The `welcome` frame, to be sent before anything from `events`.
    pub welcome: Utf8Bytes,
    /// Room events for this member, in room order, and the hub's kick if it drops the member.
    pub events: EventQueue,
}

impl Reservation {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    pub fn room(&self) -> &str {
        &self.room.name
    }

    /// Makes the reserved name a member: the others get `join`, the newcomer its `welcome`.
    pub fn join(mut self) -> Joined {
        let name = self.name.take().unwrap_or_default();
        let (events_tx, events) = event_queue(self.hub.inner.limits.send_queue);
        let connection = self
            .hub
            .inner
            .next_connection
            .fetch_add(1, Ordering::Relaxed);
        let room_name = self.room.name.to_string();

        let mut state = lock(&self.room.state);
        state.reserved.remove(&name);
        if !state.members.is_empty() {
            let join = encode(&ServerEvent::Join {
                room: room_name.clone(),
                user: name.clone(),
                ts: now_millis(),
            });
            state.broadcast(&room_name, join);
        }
        state.members.push(Member {
            connection,
            name: name.clone(),
            events: events_tx,
        });
        state.last_active = Instant::now();
        let welcome = encode_welcome(
            &name,
            &room_name,
            &state.member_names(),
            state.history.iter().map(Utf8Bytes::as_str),
        );
        drop(state);

        Joined {
            membership: Membership {
                hub: self.hub.clone(),
                room: Arc::clone(&self.room),
                connection,
                name,
            },
            welcome: Utf8Bytes::from(welcome),
            events,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            lock(&self.room.state).reserved.remove(&name);
        }
    }
}

/// A connection's place in a room. Dropping it leaves the room and tells the others.
pub struct Membership {
    hub: Hub,
    room: Arc<Room>,
    connection: u64,
    name: String,
}

impl Membership {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn room(&self) -> &str {
        &self.room.name
    }

    /// Posts `text` to the room: it gets the next id, enters the history, and is queued for
    /// every member, the sender included.
    ///
    /// Fails if the hub has already removed this member (as a slow consumer): frames it sent
    /// before it noticed are not posted, and its name, now free, cannot be spoken for.
    pub fn say(&self, text: String) -> Result<Backlog, NotAMember> {
        let metrics = &self.hub.inner.metrics;
        metrics.message_received();
        let mut state = lock(&self.room.state);
        if !state
            .members
            .iter()
            .any(|m| m.connection == self.connection)
        {
            return Err(NotAMember);
        }
        let message = ChatMessage {
            id: state.next_id,
            room: self.room.name.to_string(),
            user: self.name.clone(),
            text,
            ts: now_millis(),
        };
        state.next_id += 1;
        state.last_active = Instant::now();
        let frame = encode(&ServerEvent::Message(message));
        let history = self.hub.inner.limits.history;
        if history > 0 {
            if state.history.len() >= history {
                state.history.pop_front();
            }
            state.history.push_back(frame.clone());
        }
        let Broadcast { delivered, backlog } = state.broadcast(&self.room.name, frame);
        drop(state);
        metrics.messages_delivered(delivered);
        Ok(Backlog(backlog))
    }
}

/// What a broadcast did: how many members got the event, and whether some member's queue is
/// now at least half full.
struct Broadcast {
    delivered: u64,
    backlog: bool,
}

/// Whether some member's queue is at least half full after a post: the poster should let the
/// members catch up before it posts more (see `Connection::serve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog(pub bool);

/// The hub had already removed the member that tried to post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAMember;

impl Drop for Membership {
    fn drop(&mut self) {
        let mut state = lock(&self.room.state);
        let Some(index) = state
            .members
            .iter()
            .position(|m| m.connection == self.connection)
        else {
            // Already removed as a slow consumer; its leave was announced then.
            return;
        };
        state.members.remove(index);
        state.last_active = Instant::now();
        if state.members.is_empty() {
            return;
        }
        let leave = encode(&ServerEvent::Leave {
            room: self.room.name.to_string(),
            user: self.name.clone(),
            ts: now_millis(),
        });
        state.broadcast(&self.room.name, leave);
    }
}

fn encode(event: &ServerEvent) -> Utf8Bytes {
    Utf8Bytes::from(event.to_json())
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Locks a mutex, shrugging off poisoning: every critical section here leaves the state
/// consistent before anything that could panic, so a poisoned lock still guards valid data.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Next;

    /// A hub for one test: small rooms, each member queueing at most `send_queue` events.
    fn hub(send_queue: usize) -> Hub {
        let limits = HubLimits {
            history: 10,
            max_rooms: 10,
            send_queue,
        };
        Hub::new(limits, Metrics::new())
    }

    #[tokio::test]
    async fn a_member_dropped_as_slow_consumer_can_no_longer_post() {
        let hub = hub(2);
        let a = hub.reserve("r", Some("a".into())).unwrap().join();
        let mut b = hub.reserve("r", Some("b".into())).unwrap().join();

        // a never reads: `join b` and `x` fill its queue, `y` overflows it.
        b.membership.say("x".into()).unwrap();
        assert_eq!(b.events.next_batch().await, Next::Events);
        b.membership.say("y".into()).unwrap();

        assert_eq!(a.membership.say("ghost".into()), Err(NotAMember));
        let late = hub
            .reserve("r", Some("a".into()))
            .expect("the name is free again")
            .join();
        let welcome: ServerEvent = serde_json::from_str(&late.welcome).unwrap();
        let ServerEvent::Welcome { history, .. } = welcome else {
            panic!("expected a welcome");
        };
        let texts: Vec<&str> = history.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["x", "y"]);
    }

    #[tokio::test]
    async fn a_message_is_serialized_once_and_its_bytes_shared_by_every_member() {
        let hub = hub(16);
        let mut members: Vec<Joined> = ["a", "b", "c"]
            .into_iter()
            .map(|name| hub.reserve("r", Some(name.into())).unwrap().join())
            .collect();
        members[0].membership.say("hi".into()).unwrap();

        let mut copies = Vec::new();
        for member in &mut members {
            assert_eq!(member.events.next_batch().await, Next::Events);
            let message = member.events.batch().pop_back().expect("the message");
            copies.push(message);
        }
        let event: ServerEvent = serde_json::from_str(&copies[0]).unwrap();
        assert!(matches!(event, ServerEvent::Message(message) if message.text == "hi"));
        // Same bytes, same address: one buffer, reference-counted, not three serializations.
        let address = copies[0].as_str().as_ptr();
        assert!(copies.iter().all(|copy| copy.as_str().as_ptr() == address));
    }
}
