//! The cluster on Redis (SPEC §11): many nodes, one chat.
//!
//! `Cluster` is what the hub holds when `--redis-url` is given; `ClusterDriver` is the one task
//! per node that owns the Redis link. Redis holds what nodes must agree on: each room's id
//! sequence and bounded history, its members, and every node's lease. Lua scripts (in `lua/`)
//! change each of those atomically with the `PUBLISH` that tells the other nodes, so every node
//! sees one order, and the history holds exactly what was published.
//!
//! A node posts by running `post.lua` on a shared multiplexed connection (concurrent posts of
//! many connections are pipelined on it), and delivers only what comes back on its
//! subscription: the sender's own node hears its message like every other node does, so all
//! members everywhere see one order. The driver subscribes to a room while the node has
//! members in it, tracks the last id it delivered there (in the hub's room), and fills any jump
//! from the stored history before it delivers newer messages; what the history no longer holds
//! is announced with a `gap` event. After the link comes back it does the same for every room,
//! so members see one unbroken sequence (or an announced gap), never a silent hole.
//!
//! Frames are serialized once, on the posting node, exactly as clients receive them, and relayed
//! byte for byte: a receiving node hands the payload to all its members without parsing the
//! text. This module does not know about sockets; local fan-out stays in `hub.rs`.
//!
//! Keys, all under `wschat:`: `room:R:seq` (last id), `room:R:history` (sorted set of frames by
//! id), `room:R:owners` (name → node), `room:R:members` (names by join time), `nodes` (node →
//! lease deadline), `node:N:members` (`R/name` entries, for removing a dead node's members),
//! `guests` (the guest-name counter), `epoch` (tells a Redis that lost its data). The channel of
//! room R is `wschat:room:R`.

mod driver;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Script;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub use driver::ClusterDriver;
use driver::Post;

use crate::config::RedisUrl;
use crate::handshake::Rejection;
use crate::hub::{lock, now_millis};
use crate::metrics::Metrics;
use crate::protocol::{message_frame_tail, ServerEvent};

/// Prefix of every key and channel the cluster uses.
const PREFIX: &str = "wschat:";
const NODES_KEY: &str = "wschat:nodes";
const GUESTS_KEY: &str = "wschat:guests";
const EPOCH_KEY: &str = "wschat:epoch";

/// What the cluster needs from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ClusterSettings {
    /// Messages kept per room (`--history`).
    pub history: usize,
    pub history_ttl: Duration,
    pub node_timeout: Duration,
}

/// The Redis link is down: nothing was posted, claimed or subscribed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// A post Redis did not confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostFailed {
    /// The request may have reached Redis and run (its reply was lost); `false` when the link
    /// was down and nothing was sent.
    pub maybe_posted: bool,
}

/// A node's handle on the cluster, shared by the hub and the driver.
pub struct Cluster {
    node: String,
    node_members_key: String,
    client: redis::Client,
    settings: ClusterSettings,
    /// The command connection while the link is up; `None` while it is down.
    link: Mutex<Option<MultiplexedConnection>>,
    up: AtomicBool,
    /// After Redis lost its data, the node waits until every node had time to raise the room
    /// sequences to what its members saw (see `driver::DATA_LOSS_HOLD`).
    posts_held_until: Mutex<Option<Instant>>,
    control: mpsc::UnboundedSender<Control>,
    /// Posts on their way to the driver's poster, which sends all that wait in one call.
    posts: mpsc::UnboundedSender<Post>,
    metrics: Metrics,
    scripts: Scripts,
    /// Names this node has let go of whose release has not run yet.
    releasing: Mutex<HashMap<RoomName, Letting>>,
    /// Connections whose claim is on its way to Redis or back.
    claims_in_flight: Mutex<HashSet<u64>>,
}

/// A name in a room: `(room, name)`.
type RoomName = (Arc<str>, String);

/// A name being let go of: the connection that held it, and whether it had joined (so its
/// `leave` is due).
type Letting = (u64, bool);

/// Marks a connection's claim as in flight while it lives, so a reconciliation running at the
/// same time neither claims its name again nor releases what Redis just gave it.
struct ClaimInFlight<'a> {
    cluster: &'a Cluster,
    connection: u64,
}

impl<'a> ClaimInFlight<'a> {
    fn new(cluster: &'a Cluster, connection: u64) -> Self {
        lock(&cluster.claims_in_flight).insert(connection);
        Self {
            cluster,
            connection,
        }
    }
}

impl Drop for ClaimInFlight<'_> {
    fn drop(&mut self) {
        lock(&self.cluster.claims_in_flight).remove(&self.connection);
    }
}

/// Requests from connections to the driver, which alone talks on the subscription.
enum Control {
    /// Subscribe to `room` (if not yet) and bring it up to date; answer when done.
    Subscribe {
        room: Arc<str>,
        synced: oneshot::Sender<Result<(), Unavailable>>,
    },
    /// Give up `name` (held by `connection`) in `room`; with `announce`, publish its
    /// `leave`. An empty name is the guest name `connection` may have been given.
    Release(Release),
    /// The node's last member of `room` left: unsubscribe unless someone joined since.
    RoomEmpty { room: Arc<str> },
}

/// A name to give up; see `Control::Release`.
#[derive(Debug, Clone)]
struct Release {
    room: Arc<str>,
    name: String,
    connection: u64,
    announce: bool,
}

struct Scripts {
    post: Script,
    sync: Script,
    claim: Script,
    release: Script,
    announce: Script,
    renew: Script,
    reap: Script,
    epoch: Script,
}

impl Scripts {
    fn load() -> Self {
        Self {
            post: Script::new(include_str!("lua/post.lua")),
            sync: Script::new(include_str!("lua/sync.lua")),
            claim: Script::new(include_str!("lua/claim.lua")),
            release: Script::new(include_str!("lua/release.lua")),
            announce: Script::new(include_str!("lua/announce.lua")),
            renew: Script::new(include_str!("lua/renew.lua")),
            reap: Script::new(include_str!("lua/reap.lua")),
            epoch: Script::new(include_str!("lua/epoch.lua")),
        }
    }
}

/// The Redis names of one room. Those a post needs are built at once; the presence keys only
/// when asked for, so the per-message path formats three names, not five.
struct RoomKeys {
    channel: String,
    seq: String,
    history: String,
}

impl RoomKeys {
    fn new(room: &str) -> Self {
        let channel = format!("{PREFIX}room:{room}");
        Self {
            seq: format!("{channel}:seq"),
            history: format!("{channel}:history"),
            channel,
        }
    }

    /// name → holder.
    fn owners(&self) -> String {
        format!("{}:owners", self.channel)
    }

    /// Names by join time.
    fn members(&self) -> String {
        format!("{}:members", self.channel)
    }
}

/// Why a cluster could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("--redis-url is not usable: {0}")]
pub struct ClusterError(String);

impl Cluster {
    /// Sets up a node on the Redis at `url`; nothing connects until the driver runs.
    pub fn new(
        url: &RedisUrl,
        settings: ClusterSettings,
        metrics: Metrics,
    ) -> Result<(Arc<Self>, ClusterDriver), ClusterError> {
        // The client's own message names the problem without echoing the URL (or a password).
        let client =
            redis::Client::open(url.expose()).map_err(|error| ClusterError(error.to_string()))?;
        let node = random_id();
        let (control, requests) = mpsc::unbounded_channel();
        let (posts, waiting_posts) = mpsc::unbounded_channel();
        let cluster = Arc::new(Self {
            node_members_key: format!("{PREFIX}node:{node}:members"),
            node,
            client,
            settings,
            link: Mutex::new(None),
            up: AtomicBool::new(false),
            posts_held_until: Mutex::new(None),
            control,
            posts,
            metrics,
            scripts: Scripts::load(),
            releasing: Mutex::new(HashMap::new()),
            claims_in_flight: Mutex::new(HashSet::new()),
        });
        let driver = ClusterDriver::new(Arc::clone(&cluster), requests, waiting_posts);
        Ok((cluster, driver))
    }

    /// Whether the node can serve now: its Redis link works, and it is not holding back
    /// after Redis lost its data (while the other nodes catch up, see `DATA_LOSS_HOLD`).
    pub fn is_up(&self) -> bool {
        if !self.up.load(Ordering::Acquire) {
            return false;
        }
        let mut held = lock(&self.posts_held_until);
        match *held {
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                *held = None;
                true
            }
            None => true,
        }
    }

    fn connection(&self) -> Result<MultiplexedConnection, Unavailable> {
        if !self.is_up() {
            return Err(Unavailable);
        }
        lock(&self.link).clone().ok_or(Unavailable)
    }

    /// What Redis records as the holder of a name: this node and the connection, so a late
    /// release of an old connection cannot take the name from a new one.
    fn holder(&self, connection: u64) -> String {
        format!("{}/{connection}", self.node)
    }

    /// The holder of `name` in `room` that this node has let go of but Redis may still
    /// record (its release is queued), and the `leave` to announce for it, if any: a new claim
    /// of the name on this node takes over from exactly that holder.
    fn takeover_of(&self, room: &str, name: &str) -> (String, String) {
        let releasing = lock(&self.releasing);
        match releasing.get(&(Arc::from(room), name.to_owned())) {
            Some(&(connection, announce)) => {
                let leave = if announce {
                    leave_frame(room, name)
                } else {
                    String::new()
                };
                (self.holder(connection), leave)
            }
            None => (String::new(), String::new()),
        }
    }

    /// Whether `connection`'s claim is on its way to Redis or back.
    fn claim_in_flight(&self, connection: u64) -> bool {
        lock(&self.claims_in_flight).contains(&connection)
    }

    /// Claims `name` (or the next free `guest-<n>`) in `room`, cluster-wide, for `connection`.
    pub async fn claim(
        &self,
        room: &str,
        name: Option<&str>,
        connection: u64,
    ) -> Result<String, Rejection> {
        let mut redis = self.connection().map_err(|_| Rejection::Unavailable)?;
        let _in_flight = ClaimInFlight::new(self, connection);
        let claimed = self
            .run_claim(&mut redis, room, name, connection, "")
            .await
            .map_err(|error| {
                tracing::debug!(%error, "claiming a name in redis failed");
                Rejection::Unavailable
            })?;
        // `{name, 0}`: this very holder had it already (a reconciliation got there first).
        claimed.map(|(name, _)| name).ok_or(Rejection::NameTaken)
    }

    /// Runs `claim.lua` for `connection` (see the script), taking over from this node's
    /// connection that let the name go, if any; `join` is published when the name is claimed
    /// now (empty: none).
    async fn run_claim(
        &self,
        redis: &mut MultiplexedConnection,
        room: &str,
        name: Option<&str>,
        connection: u64,
        join: &str,
    ) -> redis::RedisResult<Option<(String, i64)>> {
        let keys = RoomKeys::new(room);
        let (stale, leave) =
            name.map_or_else(Default::default, |name| self.takeover_of(room, name));
        self.scripts
            .claim
            .key(keys.owners())
            .key(keys.members())
            .key(&self.node_members_key)
            .key(GUESTS_KEY)
            .arg(name.unwrap_or_default())
            .arg(self.holder(connection))
            .arg(room)
            .arg(join)
            .arg(&keys.channel)
            .arg(stale)
            .arg(leave)
            .invoke_async(redis)
            .await
    }

    /// Subscribes to `room` unless the node is already, and returns once the node's copy of the
    /// room (last id, history) is up to date with Redis.
    pub async fn subscribe(&self, room: &Arc<str>) -> Result<(), Unavailable> {
        let (synced, done) = oneshot::channel();
        let request = Control::Subscribe {
            room: Arc::clone(room),
            synced,
        };
        self.control.send(request).map_err(|_| Unavailable)?;
        match tokio::time::timeout(driver::SUBSCRIBE_WAIT, done).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(Unavailable),
        }
    }

    /// The room's members on every node, in the order they joined.
    pub async fn members(&self, room: &str) -> Result<Vec<String>, Unavailable> {
        let mut connection = self.connection()?;
        redis::cmd("ZRANGE")
            .arg(RoomKeys::new(room).members())
            .arg(0)
            .arg(-1)
            .query_async(&mut connection)
            .await
            .map_err(|_| Unavailable)
    }

    /// Tells every node's members of `room` that `name` joined.
    pub async fn announce_join(&self, room: &str, name: &str) {
        let Ok(mut connection) = self.connection() else {
            return;
        };
        let keys = RoomKeys::new(room);
        let frame = join_frame(room, name);
        let published: redis::RedisResult<i64> = self
            .scripts
            .announce
            .key(&keys.seq)
            .key(&keys.history)
            .arg(frame)
            .arg(&keys.channel)
            .arg(self.ttl_millis())
            .invoke_async(&mut connection)
            .await;
        if let Err(error) = published {
            tracing::debug!(%error, "announcing a join failed");
        }
    }

    /// Posts a message: Redis gives it the room's next id (above `floor`, the highest id this
    /// node has delivered in the room), stores it and publishes it. Members receive it through
    /// the subscription, the sender included. Posts of every connection that wait while one
    /// call is under way go together in the next (see `driver::Poster`).
    pub async fn post(
        &self,
        room: &str,
        user: &str,
        text: &str,
        floor: u64,
    ) -> Result<u64, PostFailed> {
        let not_sent = PostFailed {
            maybe_posted: false,
        };
        if !self.is_up() {
            return Err(not_sent);
        }
        let keys = RoomKeys::new(room);
        let (done, posted) = oneshot::channel();
        let post = Post {
            seq: keys.seq,
            history: keys.history,
            channel: keys.channel,
            tail: message_frame_tail(room, user, text, now_millis()),
            floor,
            done,
        };
        self.posts.send(post).map_err(|_| not_sent)?;
        let started = Instant::now();
        // The poster always answers; if it is gone mid-call, the post may have run.
        let posted = posted
            .await
            .unwrap_or(Err(PostFailed { maybe_posted: true }));
        self.metrics.redis_published(started.elapsed());
        posted
    }

    /// Gives up `name` in `room` in the background; with `announce`, every node's members hear
    /// `leave`. Queued while Redis is away and done when it is back.
    pub fn release(&self, room: &Arc<str>, name: String, connection: u64, announce: bool) {
        if !name.is_empty() {
            let key = (Arc::clone(room), name.clone());
            lock(&self.releasing).insert(key, (connection, announce));
        }
        let _ = self.control.send(Control::Release(Release {
            room: Arc::clone(room),
            name,
            connection,
            announce,
        }));
    }

    /// The node's last member of `room` left.
    pub fn room_empty(&self, room: &Arc<str>) {
        let _ = self.control.send(Control::RoomEmpty {
            room: Arc::clone(room),
        });
    }

    fn ttl_millis(&self) -> u64 {
        u64::try_from(self.settings.history_ttl.as_millis()).unwrap_or(u64::MAX)
    }
}

fn join_frame(room: &str, name: &str) -> String {
    ServerEvent::Join {
        room: room.to_owned(),
        user: name.to_owned(),
        ts: now_millis(),
    }
    .to_json()
}

fn leave_frame(room: &str, name: &str) -> String {
    ServerEvent::Leave {
        room: room.to_owned(),
        user: name.to_owned(),
        ts: now_millis(),
    }
    .to_json()
}

/// 128 random bits in hex: a node's name for its lease, or a fresh epoch.
fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
