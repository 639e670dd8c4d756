//! Rooms: membership, message ordering, history and fan-out, on one node or a cluster.
//!
//! Connections talk to rooms only through `Hub`, `Reservation` and `Membership`; nothing else
//! knows where rooms live. The hub has two backends, chosen at start: `Memory` (one node, the
//! default) and `Redis` (a cluster, SPEC §11, see `cluster/`). Both feed the same local rooms:
//! this node's members, their queues, and the serialize-once fan-out. What differs is where ids,
//! history and presence come from: in memory they are decided here under the room's lock; in a
//! cluster Redis decides them, and the cluster driver delivers to the local room in id order.
//!
//! Ordering: a room's lock is held while a message gets its id and is pushed onto every
//! member's queue, so all members see one order. Pushing never waits (`try_send` on a bounded
//! queue); a member whose queue is full is removed and told to close as a slow consumer, so one
//! stalled reader can neither slow the room down nor grow memory.
//!
//! Each event is serialized once; the resulting `Utf8Bytes` is reference-counted, so every
//! recipient shares the same allocation.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::queue::{event_queue, EventQueue, EventSender, Full, Kick};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::cluster::{Cluster, PostFailed, Unavailable};
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
    backend: Backend,
}

/// Where ids, history and presence are decided.
pub enum Backend {
    /// Here, in this process: one node.
    Memory,
    /// In Redis, shared by every node of the cluster.
    Redis(Arc<Cluster>),
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
    reserved: HashMap<String, Reserved>,
    /// Handshakes of users (who may hold several connections under one name) on their way
    /// in; in memory only, where a user's name is never exclusive.
    users_joining: usize,
    /// Handshakes waiting for Redis to confirm a name: the room must not be evicted meanwhile.
    claiming: usize,
    /// In a cluster: whether this room is subscribed and up to date, so the driver delivers
    /// to it. Set and cleared by the driver only.
    synced: bool,
    /// Tells this room from one of the same name created after it was evicted.
    generation: u64,
    /// In memory, the id the next message gets; in a cluster, one past the last id delivered.
    next_id: u64,
    /// The room's recent `message` frames, exactly as broadcast: a welcome embeds these bytes.
    history: VecDeque<Utf8Bytes>,
    last_active: Instant,
}

/// A reserved name: the connection id it will have, and whether Redis has confirmed it (always,
/// in memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reserved {
    connection: u64,
    confirmed: bool,
}

struct Member {
    connection: u64,
    name: String,
    events: EventSender,
}

impl Hub {
    pub fn new(limits: HubLimits, metrics: Metrics, backend: Backend) -> Self {
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
                backend,
            }),
        }
    }

    /// Whether the hub can take members and messages now: always in memory; in a cluster, while
    /// the Redis link works.
    pub fn is_available(&self) -> bool {
        match &self.inner.backend {
            Backend::Memory => true,
            Backend::Redis(cluster) => cluster.is_up(),
        }
    }

    /// Holds the claimant's name in `room` for a handshake about to be upgraded. Nobody sees
    /// the reservation; `Reservation::join` makes it a member. A guest's name (or a fresh
    /// `guest-<n>`) is exclusive; a user's is shared by all of that user's connections. In a
    /// cluster the name is claimed in Redis, so it is unique across every node; there, a
    /// user's name is claimed like a guest's (one connection per room).
    pub async fn reserve(&self, room: &str, claimant: Claimant) -> Result<Reservation, Rejection> {
        match (&self.inner.backend, claimant) {
            (Backend::Memory, Claimant::Guest(name)) => self.reserve_here(room, name),
            (Backend::Memory, Claimant::User(name)) => self.reserve_user_here(room, name),
            (Backend::Redis(cluster), Claimant::Guest(name)) => {
                self.reserve_in_cluster(cluster, room, name).await
            }
            (Backend::Redis(cluster), Claimant::User(name)) => {
                self.reserve_in_cluster(cluster, room, Some(name)).await
            }
        }
    }

    fn reserve_user_here(&self, room: &str, name: String) -> Result<Reservation, Rejection> {
        let mut registry = lock(&self.inner.registry);
        let room = match registry.rooms.get(room) {
            Some(existing) => Arc::clone(existing),
            None => self.create_room(&mut registry, room)?,
        };
        lock(&room.state).users_joining += 1;
        Ok(Reservation {
            hub: self.clone(),
            room,
            name: Some(name),
            connection: self.next_connection_id(),
            shared: true,
        })
    }

    async fn reserve_in_cluster(
        &self,
        cluster: &Cluster,
        room: &str,
        name: Option<String>,
    ) -> Result<Reservation, Rejection> {
        if !cluster.is_up() {
            return Err(Rejection::Unavailable);
        }
        let connection = self.next_connection_id();
        let room = {
            let mut registry = lock(&self.inner.registry);
            let room = match registry.rooms.get(room) {
                Some(existing) => Arc::clone(existing),
                None => self.create_room(&mut registry, room)?,
            };
            let mut state = lock(&room.state);
            if let Some(name) = &name {
                if state.is_taken(name) {
                    return Err(Rejection::NameTaken);
                }
                // Held here while Redis is asked, so a second handshake on this node for the
                // same name is refused at once instead of racing it.
                let pending = Reserved {
                    connection,
                    confirmed: false,
                };
                state.reserved.insert(name.clone(), pending);
            }
            state.claiming += 1;
            drop(state);
            room
        };
        let mut pending = PendingClaim {
            cluster,
            room: &room,
            name: name.as_deref(),
            connection,
            done: false,
        };
        let claimed = cluster.claim(&room.name, name.as_deref(), connection).await;
        pending.done = true;
        drop(pending);
        let mut state = lock(&room.state);
        state.claiming -= 1;
        let confirmed = Reserved {
            connection,
            confirmed: true,
        };
        let claimed = claimed.and_then(|claimed| {
            let clash = state
                .reserved
                .get(&claimed)
                .is_some_and(|other| other.connection != connection)
                || state.members.iter().any(|member| member.name == claimed);
            if clash {
                // A guest name someone on this node asked for by hand while Redis was giving
                // it to us: neither may have it twice; ours is undone below.
                return Err(Rejection::Unavailable);
            }
            Ok(claimed)
        });
        match claimed {
            Ok(claimed) => {
                state.reserved.insert(claimed.clone(), confirmed);
                drop(state);
                Ok(Reservation {
                    hub: self.clone(),
                    room: Arc::clone(&room),
                    name: Some(claimed),
                    connection,
                    shared: false,
                })
            }
            Err(rejection) => {
                if let Some(name) = &name {
                    state.remove_reservation(name, connection);
                }
                if rejection == Rejection::Unavailable {
                    // The reply was lost (not necessarily the claim), or the name clashed: undo
                    // whatever Redis holds for this connection.
                    let name = name.clone().unwrap_or_default();
                    cluster.release(&room.name, name, connection, false);
                }
                if state.is_idle() {
                    cluster.room_empty(&room.name);
                }
                Err(rejection)
            }
        }
    }

    fn next_connection_id(&self) -> u64 {
        self.inner.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    fn reserve_here(&self, room: &str, name: Option<String>) -> Result<Reservation, Rejection> {
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
        let connection = self.next_connection_id();
        let reserved = Reserved {
            connection,
            confirmed: true,
        };
        state.reserved.insert(name.clone(), reserved);
        drop(state);
        Ok(Reservation {
            hub: self.clone(),
            room,
            name: Some(name),
            connection,
            shared: false,
        })
    }

    /// Whether `reserve` would succeed, without reserving or creating anything.
    pub fn check(&self, room: &str, claimant: &Claimant) -> Result<(), Rejection> {
        let registry = lock(&self.inner.registry);
        let exclusive = match (&self.inner.backend, claimant) {
            (Backend::Memory, Claimant::User(_)) => None,
            (_, Claimant::Guest(name)) => name.as_deref(),
            (_, Claimant::User(name)) => Some(name.as_str()),
        };
        match registry.rooms.get(room) {
            Some(existing) => match exclusive {
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
        // In a cluster, Redis keeps a room's ids; a room new to this node starts from nothing
        // and learns its last id when it subscribes.
        let next_id = match self.inner.backend {
            Backend::Memory => registry.evicted_id_floor,
            Backend::Redis(_) => 1,
        };
        let room = Arc::new(Room {
            name: Arc::from(name),
            state: Mutex::new(RoomState {
                members: Vec::new(),
                reserved: HashMap::new(),
                users_joining: 0,
                claiming: 0,
                synced: false,
                generation: self.next_connection_id(),
                next_id,
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
        self.reserved.contains_key(name) || self.members.iter().any(|member| member.name == name)
    }

    /// Drops the reservation of `name` if it is `connection`'s.
    fn remove_reservation(&mut self, name: &str, connection: u64) {
        if self
            .reserved
            .get(name)
            .is_some_and(|reserved| reserved.connection == connection)
        {
            self.reserved.remove(name);
        }
    }

    fn is_idle(&self) -> bool {
        self.members.is_empty()
            && self.reserved.is_empty()
            && self.users_joining == 0
            && self.claiming == 0
    }

    /// Each member's name once, in join order: a user with several connections is one member
    /// (SPEC §10).
    fn member_names(&self) -> Vec<&str> {
        let mut seen = HashSet::with_capacity(self.members.len());
        self.members
            .iter()
            .map(|member| member.name.as_str())
            .filter(|name| seen.insert(*name))
            .collect()
    }

    /// Whether some member is called `name`: a user's next connection joins, and its last
    /// leaves, silently.
    fn has_member_named(&self, name: &str) -> bool {
        self.members.iter().any(|member| member.name == name)
    }

    /// Queues `event` for every member but `except`; returns how many got it. Members whose
    /// queue is full are removed and told to close. In memory they are announced as having left
    /// (repeated until no announcement overflows another queue); in a cluster their names are
    /// released in Redis, whose `leave` reaches every node, this one included.
    fn broadcast(
        &mut self,
        room: &Arc<str>,
        event: Utf8Bytes,
        except: Option<&str>,
        backend: &Backend,
    ) -> Broadcast {
        self.broadcast_all(room, std::slice::from_ref(&event), except, backend)
    }

    /// [`RoomState::broadcast`] for several events, queued member by member, so each member
    /// gets them in one push (and one wake-up).
    fn broadcast_all(
        &mut self,
        room: &Arc<str>,
        events: &[Utf8Bytes],
        except: Option<&str>,
        backend: &Backend,
    ) -> Broadcast {
        let mut delivered = 0;
        let mut backlog = false;
        let mut overflowed = Vec::new();
        for member in &self.members {
            if except == Some(member.name.as_str()) {
                continue;
            }
            let pushed = match events {
                [event] => member.events.try_push(event.clone()),
                _ => member.events.try_push_all(events),
            };
            match pushed {
                Ok(waiting) => {
                    delivered += events.len() as u64;
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
            if self.has_member_named(&member.name) {
                // Another connection of the same user stays in the room.
                continue;
            }
            if let Backend::Redis(cluster) = backend {
                cluster.release(room, member.name, member.connection, true);
                if self.is_idle() {
                    cluster.room_empty(room);
                }
                continue;
            }
            let leave = encode(&ServerEvent::Leave {
                room: room.to_string(),
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

    fn is_member(&self, connection: u64) -> bool {
        self.members.iter().any(|m| m.connection == connection)
    }

    /// Appends a `message` frame to the room's history, dropping the oldest beyond `keep`.
    fn remember(&mut self, frame: &Utf8Bytes, keep: usize) {
        if keep == 0 {
            return;
        }
        if self.history.len() >= keep {
            self.history.pop_front();
        }
        self.history.push_back(frame.clone());
    }
}

/// A name held in a room between the handshake decision and the upgrade. Dropping it without
/// joining frees the name.
pub struct Reservation {
    hub: Hub,
    room: Arc<Room>,
    name: Option<String>,
    /// The id the connection will have; in a cluster, part of the name's holder in Redis.
    connection: u64,
    /// A user's name, which other connections of the same user may share.
    shared: bool,
}

/// Who asks for a place in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimant {
    /// A shared-secret client: the name it asked for, or `None` for a fresh `guest-<n>`.
    Guest(Option<String>),
    /// A per-user identity (SPEC §10), which may be in a room several times.
    User(String),
}

/// A name being claimed in Redis for a handshake. If the handshake is dropped while it waits
/// (the client hung up, the server is shutting down), this undoes the claim, whatever Redis
/// did with it.
struct PendingClaim<'a> {
    cluster: &'a Cluster,
    room: &'a Arc<Room>,
    name: Option<&'a str>,
    connection: u64,
    done: bool,
}

impl Drop for PendingClaim<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = lock(&self.room.state);
        state.claiming -= 1;
        if let Some(name) = self.name {
            state.remove_reservation(name, self.connection);
        }
        let name = self.name.unwrap_or_default().to_owned();
        self.cluster
            .release(&self.room.name, name, self.connection, false);
        if state.is_idle() {
            self.cluster.room_empty(&self.room.name);
        }
    }
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
    ///
    /// In a cluster the node first subscribes to the room (and brings it up to date), and the
    /// `join` goes out through Redis to every node. Fails only when Redis is unavailable.
    pub async fn join(self) -> Result<Joined, Unavailable> {
        let cluster = match &self.hub.inner.backend {
            Backend::Memory => return Ok(self.join_here(None)),
            Backend::Redis(cluster) => Arc::clone(cluster),
        };
        cluster.subscribe(&self.room.name).await?;
        let members = cluster.members(&self.room.name).await?;
        let joined = self.join_here(Some(members));
        cluster
            .announce_join(joined.membership.room(), joined.membership.name())
            .await;
        Ok(joined)
    }

    /// Adds the member to the local room. `cluster_members` is the room's member list from
    /// Redis; without it (in memory) the local members are the room's, and hear `join` here.
    fn join_here(mut self, cluster_members: Option<Vec<String>>) -> Joined {
        let name = self.name.take().unwrap_or_default();
        let (events_tx, events) = event_queue(self.hub.inner.limits.send_queue);
        let connection = self.connection;
        let room_name = Arc::clone(&self.room.name);

        let mut state = lock(&self.room.state);
        if self.shared {
            state.users_joining -= 1;
        } else {
            state.remove_reservation(&name, connection);
        }
        if cluster_members.is_none() && !state.has_member_named(&name) && !state.members.is_empty()
        {
            let join = encode(&ServerEvent::Join {
                room: room_name.to_string(),
                user: name.clone(),
                ts: now_millis(),
            });
            state.broadcast(&room_name, join, None, &self.hub.inner.backend);
        }
        state.members.push(Member {
            connection,
            name: name.clone(),
            events: events_tx,
        });
        state.last_active = Instant::now();
        let history = state.history.iter().map(Utf8Bytes::as_str);
        let welcome = match &cluster_members {
            Some(members) => encode_welcome(&name, &room_name, members, history),
            None => encode_welcome(&name, &room_name, &state.member_names(), history),
        };
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
            let mut state = lock(&self.room.state);
            if self.shared {
                state.users_joining -= 1;
                return;
            }
            state.remove_reservation(&name, self.connection);
            if let Backend::Redis(cluster) = &self.hub.inner.backend {
                cluster.release(&self.room.name, name, self.connection, false);
                if state.is_idle() {
                    cluster.room_empty(&self.room.name);
                }
            }
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
    /// every member, the sender included. In a cluster Redis assigns the id and every node
    /// (this one too) delivers the message when it arrives on the room's subscription.
    ///
    /// Fails if the hub has already removed this member (as a slow consumer): frames it sent
    /// before it noticed are not posted, and its name, now free, cannot be spoken for. In a
    /// cluster it fails, posting nothing, while Redis is unavailable.
    pub async fn say(&self, text: String) -> Result<Backlog, SayError> {
        match self.post(text) {
            Posting::Done(posted) => posted,
            Posting::Pending(posting) => posting.await,
        }
    }

    /// [`Membership::say`] without waiting for Redis: in memory the post is done when this
    /// returns; in a cluster it is under way, and a connection may read and post its next
    /// frame meanwhile (posts of one connection reach Redis in the order they were made).
    pub fn post(&self, text: String) -> Posting {
        self.hub.inner.metrics.message_received();
        let cluster = match &self.hub.inner.backend {
            Backend::Memory => return Posting::Done(self.say_here(text)),
            Backend::Redis(cluster) => Arc::clone(cluster),
        };
        let floor = {
            let state = lock(&self.room.state);
            if !state.is_member(self.connection) {
                return Posting::Done(Err(SayError::NotAMember));
            }
            state.next_id - 1
        };
        let room = Arc::clone(&self.room.name);
        let name = self.name.clone();
        Posting::Pending(Box::pin(async move {
            cluster
                .post(&room, &name, &text, floor)
                .await
                .map_err(|PostFailed { maybe_posted }| SayError::Unavailable { maybe_posted })?;
            // The message reaches this node's members from the driver; a backlog shows there.
            Ok(Backlog(false))
        }))
    }

    fn say_here(&self, text: String) -> Result<Backlog, SayError> {
        let mut state = lock(&self.room.state);
        if !state.is_member(self.connection) {
            return Err(SayError::NotAMember);
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
        state.remember(&frame, self.hub.inner.limits.history);
        let Broadcast { delivered, backlog } =
            state.broadcast(&self.room.name, frame, None, &self.hub.inner.backend);
        drop(state);
        self.hub.inner.metrics.messages_delivered(delivered);
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

/// A post on its way through Redis.
pub type PendingPost = Pin<Box<dyn Future<Output = Result<Backlog, SayError>> + Send>>;

/// What [`Membership::post`] did.
pub enum Posting {
    /// Posted, or refused, already.
    Done(Result<Backlog, SayError>),
    /// Under way; resolves once Redis has given the message its id.
    Pending(PendingPost),
}

/// Why a message was not posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SayError {
    /// The hub had already removed the member that tried to post.
    NotAMember,
    /// The cluster's Redis cannot be reached. With `maybe_posted`, the request was sent but
    /// not confirmed: it may have been posted all the same.
    Unavailable { maybe_posted: bool },
}

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
        if let Backend::Redis(cluster) = &self.hub.inner.backend {
            cluster.release(&self.room.name, self.name.clone(), self.connection, true);
            if state.is_idle() {
                cluster.room_empty(&self.room.name);
            }
            return;
        }
        if state.members.is_empty() || state.has_member_named(&self.name) {
            return;
        }
        let leave = encode(&ServerEvent::Leave {
            room: self.room.name.to_string(),
            user: self.name.clone(),
            ts: now_millis(),
        });
        state.broadcast(&self.room.name, leave, None, &self.hub.inner.backend);
    }
}

/// What the cluster driver does to this node's rooms: it alone delivers in a cluster, and only
/// to rooms it has brought up to date (`synced`).
impl Hub {
    fn room(&self, name: &str) -> Option<Arc<Room>> {
        lock(&self.inner.registry).rooms.get(name).cloned()
    }

    /// Rooms this node has members, reservations or pending claims in: those it must stay
    /// subscribed to.
    pub(crate) fn busy_rooms(&self) -> Vec<Arc<str>> {
        let registry = lock(&self.inner.registry);
        registry
            .rooms
            .values()
            .filter(|room| !lock(&room.state).is_idle())
            .map(|room| Arc::clone(&room.name))
            .collect()
    }

    /// Every name this node holds, members and confirmed reservations (a claim still on its
    /// way is not held yet): `(room, name, connection)`.
    pub(crate) fn held_names(&self) -> Vec<(Arc<str>, String, u64)> {
        let registry = lock(&self.inner.registry);
        let mut names = Vec::new();
        for room in registry.rooms.values() {
            let state = lock(&room.state);
            let members = state.members.iter().map(|m| (&m.name, m.connection));
            let reserved = state
                .reserved
                .iter()
                .filter(|(_, reserved)| reserved.confirmed)
                .map(|(name, reserved)| (name, reserved.connection));
            for (name, connection) in members.chain(reserved) {
                names.push((Arc::clone(&room.name), name.clone(), connection));
            }
        }
        names
    }

    /// Whether nobody here needs `room` any more (or it is gone).
    pub(crate) fn is_idle(&self, room: &str) -> bool {
        self.room(room)
            .is_none_or(|room| lock(&room.state).is_idle())
    }

    pub(crate) fn is_synced(&self, room: &str) -> bool {
        self.room(room).is_some_and(|room| lock(&room.state).synced)
    }

    /// Marks `room` as out of date (the driver unsubscribed).
    pub(crate) fn unsync(&self, room: &str) {
        if let Some(room) = self.room(room) {
            lock(&room.state).synced = false;
        }
    }

    /// Which incarnation of `room` this node has now.
    pub(crate) fn generation(&self, room: &str) -> Option<u64> {
        self.room(room).map(|room| lock(&room.state).generation)
    }

    /// Marks `room` up to date, if it is still the `generation` the driver synced.
    pub(crate) fn mark_synced(&self, room: &str, generation: u64) {
        if let Some(room) = self.room(room) {
            let mut state = lock(&room.state);
            if state.generation == generation {
                state.synced = true;
            }
        }
    }

    /// Marks every room out of date: the subscription is gone.
    pub(crate) fn unsync_all(&self) {
        let registry = lock(&self.inner.registry);
        for room in registry.rooms.values() {
            lock(&room.state).synced = false;
        }
    }

    /// The last id delivered in `room` here, if the room is subscribed and up to date, or is
    /// being synced (`syncing`).
    pub(crate) fn last_delivered(&self, room: &str, syncing: bool) -> Option<u64> {
        let room = self.room(room)?;
        let state = lock(&room.state);
        (state.synced || syncing).then(|| state.next_id - 1)
    }

    /// Delivers message `id` unless it was delivered already; ids skipped to reach it are
    /// announced as a gap (the driver refills what it can first). `refilled` counts it as
    /// recovered from history.
    pub(crate) fn deliver_message(&self, room: &str, id: u64, frame: Utf8Bytes, refilled: bool) {
        let Some(room) = self.room(room) else { return };
        let mut state = lock(&room.state);
        if id < state.next_id {
            return;
        }
        if id > state.next_id {
            let from = state.next_id;
            self.announce_gap(&room, &mut state, from, id - 1);
        }
        state.next_id = id + 1;
        state.last_active = Instant::now();
        state.remember(&frame, self.inner.limits.history);
        let Broadcast { delivered, .. } =
            state.broadcast(&room.name, frame, None, &self.inner.backend);
        drop(state);
        self.inner.metrics.messages_delivered(delivered);
        if refilled && delivered > 0 {
            self.inner.metrics.message_refilled();
        }
    }

    /// [`Hub::deliver_message`] for frames that arrived together, in id order: one lock, and
    /// every member gets them in one push.
    pub(crate) fn deliver_messages(&self, room: &str, frames: Vec<(u64, Utf8Bytes)>) {
        let Some(room) = self.room(room) else { return };
        let mut state = lock(&room.state);
        let mut events = Vec::with_capacity(frames.len());
        for (id, frame) in frames {
            if id < state.next_id {
                continue;
            }
            if id > state.next_id {
                // The driver refills before it batches; a jump here has nothing to refill.
                events.push(encode(&ServerEvent::Gap {
                    room: room.name.to_string(),
                    from: state.next_id,
                    to: id - 1,
                }));
            }
            state.next_id = id + 1;
            state.remember(&frame, self.inner.limits.history);
            events.push(frame);
        }
        if events.is_empty() {
            return;
        }
        state.last_active = Instant::now();
        let Broadcast { delivered, .. } =
            state.broadcast_all(&room.name, &events, None, &self.inner.backend);
        drop(state);
        self.inner.metrics.messages_delivered(delivered);
    }

    /// Announces as a gap every id up to `upto` not delivered yet.
    pub(crate) fn close_gap(&self, room: &str, upto: u64) {
        let Some(room) = self.room(room) else { return };
        let mut state = lock(&room.state);
        let from = state.next_id;
        if upto >= from {
            self.announce_gap(&room, &mut state, from, upto);
            state.next_id = upto + 1;
        }
    }

    fn announce_gap(&self, room: &Room, state: &mut RoomState, from: u64, to: u64) {
        let gap = encode(&ServerEvent::Gap {
            room: room.name.to_string(),
            from,
            to,
        });
        let Broadcast { delivered, .. } =
            state.broadcast(&room.name, gap, None, &self.inner.backend);
        if delivered > 0 {
            self.inner.metrics.gap_announced();
            tracing::warn!(room = %room.name, from, to, "messages lost to this node announced as a gap");
        }
    }

    /// Delivers a `join` or `leave` from another node (or this one) to the local members of a
    /// synced room, but not to `except`, the member who joined.
    pub(crate) fn deliver_presence(&self, room: &str, frame: Utf8Bytes, except: Option<&str>) {
        let Some(room) = self.room(room) else { return };
        let mut state = lock(&room.state);
        if !state.synced {
            return;
        }
        state.last_active = Instant::now();
        state.broadcast(&room.name, frame, except, &self.inner.backend);
    }
}

fn encode(event: &ServerEvent) -> Utf8Bytes {
    Utf8Bytes::from(event.to_json())
}

pub(crate) fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Locks a mutex, shrugging off poisoning: every critical section here leaves the state
/// consistent before anything that could panic, so a poisoned lock still guards valid data.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
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
        Hub::new(limits, Metrics::new(), Backend::Memory)
    }

    async fn join(hub: &Hub, name: &str) -> Joined {
        let reservation = hub
            .reserve("r", Claimant::Guest(Some(name.into())))
            .await
            .unwrap();
        reservation.join().await.unwrap()
    }

    #[tokio::test]
    async fn a_member_dropped_as_slow_consumer_can_no_longer_post() {
        let hub = hub(2);
        let a = join(&hub, "a").await;
        let mut b = join(&hub, "b").await;

        // a never reads: `join b` and `x` fill its queue, `y` overflows it.
        b.membership.say("x".into()).await.unwrap();
        assert_eq!(b.events.next_batch().await, Next::Events);
        b.membership.say("y".into()).await.unwrap();

        let ghost = a.membership.say("ghost".into()).await;
        assert_eq!(ghost, Err(SayError::NotAMember));
        let late = join(&hub, "a").await; // the name is free again
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
        let mut members = Vec::new();
        for name in ["a", "b", "c"] {
            members.push(join(&hub, name).await);
        }
        members[0].membership.say("hi".into()).await.unwrap();

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
