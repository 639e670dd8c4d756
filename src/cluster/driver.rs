//! The one task per cluster node that owns the Redis link: connect and reconnect, keep the
//! node's lease, subscribe to the rooms it has members in, and deliver what arrives, in id
//! order, refilling from history whatever the subscription missed.
//!
//! Everything that touches the subscription or a room's last delivered id happens here, one
//! step at a time, so a refill can never race a live delivery. Connections reach the driver
//! through `Control` requests; posts and claims go straight to Redis on the shared connection.
//! A room is delivered to only while it is `synced`: subscribed, and brought up to date from
//! Redis after the subscription began. Losing the link unsyncs every room.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, RedisResult};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use super::{
    join_frame, leave_frame, random_id, Cluster, Control, PostFailed, Release, RoomKeys,
    Unavailable, EPOCH_KEY, NODES_KEY, PREFIX,
};
use crate::hub::{lock, Hub};
use crate::protocol::RoomFrame;

/// First wait before reconnecting; doubled after each failure up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest wait between reconnection attempts: SPEC §11 wants posting back within 10 s of
/// Redis's return, and a node retrying every 2 s at worst finds it well within that.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Bounds connecting and every command, the subscription's included, so a Redis that stopped
/// answering (or a path that went dead without a reset) reads as down instead of hanging
/// handshakes, posts and the driver itself.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a joining connection waits for the driver to subscribe and sync its room; the
/// driver may first be restoring many rooms after a reconnection.
pub(super) const SUBSCRIBE_WAIT: Duration = Duration::from_secs(10);

/// After Redis lost its data (restarted without persistence), a node waits this long before it
/// serves again, so that every other node has reconnected and raised the room sequences to the
/// ids its members saw. A node retrying at most `MAX_BACKOFF` apart, each attempt bounded by
/// the connect and response timeouts, is back within it. Without the wait, a node that saw
/// fewer ids could hand out an id another node's members already have.
pub(super) const DATA_LOSS_HOLD: Duration = Duration::from_secs(6);

/// Every node renews its lease and looks for expired ones this many times per
/// `--node-timeout`. A lease lasts two of those periods: one late renewal is harmless, and a
/// dead node's members are removed within one timeout of its last renewal (its lease runs out
/// after two periods, and some node's reaper runs within the third).
const TICKS_PER_TIMEOUT: u32 = 3;
const LEASE_TICKS: u32 = 2;

/// The most frames taken from the subscription before they are delivered: members get what
/// arrived together in one push, and other work still gets its turn.
const MAX_FRAMES_PER_TURN: usize = 256;

/// Messages taken from the subscription, per room, in id order, not yet handed to the hub.
#[derive(Default)]
struct ReadyFrames {
    rooms: Vec<(String, Vec<(u64, Utf8Bytes)>)>,
}

impl ReadyFrames {
    /// The id of the last message waiting for `room`.
    fn last(&self, room: &str) -> Option<u64> {
        let (_, frames) = self.rooms.iter().find(|(name, _)| name == room)?;
        frames.last().map(|&(id, _)| id)
    }

    fn push(&mut self, room: &str, id: u64, frame: Utf8Bytes) {
        match self.rooms.iter_mut().find(|(name, _)| name == room) {
            Some((_, frames)) => frames.push((id, frame)),
            None => self.rooms.push((room.to_owned(), vec![(id, frame)])),
        }
    }

    /// Hands `room`'s waiting messages to the hub.
    fn flush(&mut self, hub: &Hub, room: &str) {
        if let Some(index) = self.rooms.iter().position(|(name, _)| name == room) {
            let (room, frames) = self.rooms.swap_remove(index);
            hub.deliver_messages(&room, frames);
        }
    }

    fn flush_all(self, hub: &Hub) {
        for (room, frames) in self.rooms {
            hub.deliver_messages(&room, frames);
        }
    }
}

/// The most posts sent in one call: enough to amortize a call's cost, small enough that one
/// call never holds Redis for long.
const MAX_POSTS_PER_CALL: usize = 256;

/// One message on its way to Redis, and where its id (or failure) goes.
pub(super) struct Post {
    pub(super) seq: String,
    pub(super) history: String,
    pub(super) channel: String,
    pub(super) tail: String,
    pub(super) floor: u64,
    pub(super) done: oneshot::Sender<Result<u64, PostFailed>>,
}

/// Sends posts to Redis: every post that waits while a call is under way goes in the next call
/// (group commit), one `post.lua` for all of them. A connection waits for its post's id before
/// it posts again, so its messages keep their order; the posts of many connections share the
/// round trip and the script's fixed cost.
struct Poster {
    cluster: Arc<Cluster>,
    posts: mpsc::UnboundedReceiver<Post>,
}

impl Poster {
    async fn run(mut self, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(MAX_POSTS_PER_CALL);
        loop {
            let first = tokio::select! {
                () = stop.cancelled() => return,
                first = self.posts.recv() => first,
            };
            let Some(first) = first else { return };
            batch.push(first);
            while batch.len() < MAX_POSTS_PER_CALL {
                match self.posts.try_recv() {
                    Ok(post) => batch.push(post),
                    Err(_) => break,
                }
            }
            let outcome = self.send(&batch).await;
            for (index, post) in batch.drain(..).enumerate() {
                let _ = post.done.send(match &outcome {
                    Ok(ids) => ids
                        .get(index)
                        .copied()
                        .ok_or(PostFailed { maybe_posted: true }),
                    Err(failed) => Err(*failed),
                });
            }
        }
    }

    async fn send(&self, batch: &[Post]) -> Result<Vec<u64>, PostFailed> {
        let cluster = &self.cluster;
        let mut connection = cluster.connection().map_err(|Unavailable| PostFailed {
            maybe_posted: false,
        })?;
        let mut call = cluster.scripts.post.prepare_invoke();
        call.arg(cluster.settings.history).arg(cluster.ttl_millis());
        for post in batch {
            call.key(&post.seq)
                .key(&post.history)
                .arg(&post.tail)
                .arg(post.floor)
                .arg(&post.channel);
        }
        call.invoke_async(&mut connection).await.map_err(|error| {
            tracing::debug!(%error, "posting through redis failed");
            // A reply that never came (a timeout, a dropped link) may hide posts that ran.
            PostFailed {
                maybe_posted: !is_server_error(&error),
            }
        })
    }
}

/// Runs a node's Redis link until the server stops. Created with its `Cluster`.
pub struct ClusterDriver {
    cluster: Arc<Cluster>,
    requests: mpsc::UnboundedReceiver<Control>,
    /// Taken by `run`, which runs it beside the link.
    poster: Option<Poster>,
    /// Channels subscribed on the current link.
    subscribed: HashSet<Arc<str>>,
    /// Releases asked for while Redis was away, done in order when it is back. Bounded by the
    /// connections that end during one outage.
    pending_releases: VecDeque<Release>,
    /// The epoch of the data set this node last saw.
    epoch: Option<String>,
    /// Whether the node has had a link before: a lease missing then means Redis forgot it.
    reconnecting: bool,
}

/// The two connections of one link: commands, and the subscription.
struct Link {
    commands: MultiplexedConnection,
    subscriptions: PubSubSink,
    messages: PubSubStream,
}

impl ClusterDriver {
    pub(super) fn new(
        cluster: Arc<Cluster>,
        requests: mpsc::UnboundedReceiver<Control>,
        posts: mpsc::UnboundedReceiver<Post>,
    ) -> Self {
        let poster = Poster {
            cluster: Arc::clone(&cluster),
            posts,
        };
        Self {
            cluster,
            requests,
            poster: Some(poster),
            subscribed: HashSet::new(),
            pending_releases: VecDeque::new(),
            epoch: None,
            reconnecting: false,
        }
    }

    /// Keeps the link up until `stop`, then removes the node's members and lease (its goodbye)
    /// and returns. Call `stop` only once the node's connections have ended.
    pub async fn run(mut self, hub: Hub, stop: CancellationToken) {
        let _down_on_exit = DownOnExit(Arc::clone(&self.cluster));
        match self.poster.take() {
            Some(poster) => {
                tokio::join!(poster.run(stop.clone()), self.keep_link(hub, stop.clone()));
            }
            None => self.keep_link(hub, stop).await,
        }
    }

    async fn keep_link(&mut self, hub: Hub, stop: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        let mut ever_connected = false;
        // One warning per outage; the retries after it are logged at debug level.
        let mut outage_reported = false;
        loop {
            let connected = tokio::select! {
                () = stop.cancelled() => return,
                connected = self.connect() => connected,
            };
            let failure = match connected {
                Ok(mut link) => {
                    *lock(&self.cluster.link) = Some(link.commands.clone());
                    match self.restore(&hub, &mut link).await {
                        Ok(()) => {
                            backoff = FIRST_BACKOFF;
                            outage_reported = false;
                            if ever_connected {
                                self.cluster.metrics.redis_reconnected();
                            }
                            ever_connected = true;
                            self.cluster.up.store(true, Ordering::Release);
                            self.cluster.metrics.redis_up(true);
                            tracing::info!(node = %self.cluster.node, "redis link up");
                            let served = self.serve(&hub, &mut link, &stop).await;
                            if served.is_ok() {
                                self.goodbye(&mut link.commands).await;
                                self.link_lost(&hub);
                                return;
                            }
                            self.link_lost(&hub);
                            tracing::warn!(error = %served.unwrap_err(), "redis link lost; reconnecting");
                            // Straight back: the link was fine a moment ago.
                            continue;
                        }
                        Err(error) => {
                            self.link_lost(&hub);
                            error
                        }
                    }
                }
                Err(error) => error,
            };
            if outage_reported {
                tracing::debug!(error = %failure, retry_in = ?backoff, "cannot reach redis");
            } else {
                tracing::warn!(error = %failure, "cannot reach redis; retrying with backoff up to 2s");
                outage_reported = true;
            }
            if self.wait_while_down(backoff, &stop).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn connect(&self) -> RedisResult<Link> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let commands = self
            .cluster
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let pubsub = bounded(CONNECT_TIMEOUT, self.cluster.client.get_async_pubsub()).await?;
        let (subscriptions, messages) = pubsub.split();
        Ok(Link {
            commands,
            subscriptions,
            messages,
        })
    }

    /// Marks the link down: posts and handshakes are refused, and no room is delivered to,
    /// until `restore` succeeds again.
    fn link_lost(&mut self, hub: &Hub) {
        self.cluster.up.store(false, Ordering::Release);
        self.cluster.metrics.redis_up(false);
        *lock(&self.cluster.link) = None;
        self.subscribed.clear();
        hub.unsync_all();
    }

    /// Waits `period` (or until `stop`, returning true) while answering requests as a node
    /// without Redis does: subscriptions fail, releases wait for the link.
    async fn wait_while_down(&mut self, period: Duration, stop: &CancellationToken) -> bool {
        let until = Instant::now() + period;
        loop {
            tokio::select! {
                () = stop.cancelled() => return true,
                () = sleep_until(until) => return false,
                Some(request) = self.requests.recv() => match request {
                    Control::Subscribe { synced, .. } => {
                        let _ = synced.send(Err(Unavailable));
                    }
                    Control::Release(release) => self.pending_releases.push_back(release),
                    Control::RoomEmpty { .. } => {}
                },
            }
        }
    }

    /// Brings a fresh link to where the node was: lease, queued releases, the names Redis holds
    /// for this node reconciled with the ones it really has, subscriptions, and every room
    /// refilled up to Redis's last id.
    async fn restore(&mut self, hub: &Hub, link: &mut Link) -> RedisResult<()> {
        let cluster = Arc::clone(&self.cluster);
        let epoch: String = cluster
            .scripts
            .epoch
            .key(EPOCH_KEY)
            .arg(random_id())
            .invoke_async(&mut link.commands)
            .await?;
        let data_lost = self.epoch.as_ref().is_some_and(|known| *known != epoch);
        self.epoch = Some(epoch);
        if data_lost {
            tracing::warn!(hold = ?DATA_LOSS_HOLD, "redis lost its data; waiting for the other nodes before serving");
            *lock(&cluster.posts_held_until) = Some(Instant::now() + DATA_LOSS_HOLD);
        }
        let lease_was_missing = self.renew(&mut link.commands).await?;
        if lease_was_missing && self.reconnecting {
            // Redis forgot this node: it lost its data (or came back from an older snapshot)
            // while the epoch survived, or the node was declared dead. Hold back as above.
            *lock(&cluster.posts_held_until) = Some(Instant::now() + DATA_LOSS_HOLD);
        }
        self.reconnecting = true;
        while let Some(release) = self.pending_releases.front() {
            match self.release(&mut link.commands, release).await {
                // A release Redis refuses (not one it never got) would block every restore.
                Err(error) if !is_server_error(&error) => return Err(error),
                _ => self.pending_releases.pop_front(),
            };
        }
        self.reconcile(hub, &mut link.commands).await?;
        for room in hub.busy_rooms() {
            self.subscribe(hub, link, &room).await?;
        }
        // Restoring many rooms takes a while: renew again so the lease is fresh when the
        // periodic renewals start.
        self.renew(&mut link.commands).await?;
        Ok(())
    }

    /// Serves the live link until it fails (`Err`) or `stop` (`Ok`).
    async fn serve(
        &mut self,
        hub: &Hub,
        link: &mut Link,
        stop: &CancellationToken,
    ) -> RedisResult<()> {
        let period = self.cluster.settings.node_timeout / TICKS_PER_TIMEOUT;
        let mut lease = tokio::time::interval_at(Instant::now() + period, period);
        lease.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // The lease first and requests next: a flood on the subscription must not starve
            // them (a node that stops renewing has its live members removed).
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                _ = lease.tick() => self.tick(hub, link).await?,
                Some(request) = self.requests.recv() => self.handle(hub, link, request).await?,
                message = link.messages.next() => match message {
                    Some(message) => {
                        // Whatever else has arrived goes with it: members get it in one push.
                        let mut arrived = vec![message];
                        while arrived.len() < MAX_FRAMES_PER_TURN {
                            match link.messages.next().now_or_never() {
                                Some(Some(message)) => arrived.push(message),
                                _ => break,
                            }
                        }
                        self.dispatch(hub, &mut link.commands, arrived).await?;
                    }
                    None => return Err(lost("the subscription connection closed")),
                },
            }
        }
    }

    /// The periodic work: renew the lease (and register the node's names again if it had run
    /// out), remove the members of dead nodes, keep the sequences of occupied rooms from
    /// expiring, and check the subscription connection still answers.
    async fn tick(&mut self, hub: &Hub, link: &mut Link) -> RedisResult<()> {
        if self.renew(&mut link.commands).await? {
            tracing::warn!("this node's lease had run out; registering its members again");
            self.reconcile(hub, &mut link.commands).await?;
        }
        let cluster = &self.cluster;
        let removed: u64 = cluster
            .scripts
            .reap
            .key(NODES_KEY)
            .arg(cluster.ttl_millis())
            .arg("")
            .invoke_async(&mut link.commands)
            .await?;
        if removed > 0 {
            tracing::info!(removed, "removed the members of nodes whose lease ran out");
        }
        // A room's ids must outlive quiet hours while it has members: were its sequence to
        // expire, a node new to the room would start again at 1 below ids members have seen.
        let busy = hub.busy_rooms();
        if !busy.is_empty() {
            // Refreshed every tick, so it must last at least until the next one.
            let node_timeout = u64::try_from(cluster.settings.node_timeout.as_millis());
            let keep = cluster.ttl_millis().max(node_timeout.unwrap_or(u64::MAX));
            let mut refresh = redis::pipe();
            for room in &busy {
                refresh
                    .cmd("PEXPIRE")
                    .arg(RoomKeys::new(room).seq)
                    .arg(keep)
                    .ignore();
            }
            refresh.query_async::<()>(&mut link.commands).await?;
        }
        bounded(RESPONSE_TIMEOUT, link.subscriptions.ping::<redis::Value>()).await?;
        Ok(())
    }

    async fn handle(&mut self, hub: &Hub, link: &mut Link, request: Control) -> RedisResult<()> {
        match request {
            Control::Subscribe { room, synced } => {
                let result = self.subscribe(hub, link, &room).await;
                let _ = synced.send(result.as_ref().map(|_| ()).map_err(|_| Unavailable));
                result
            }
            Control::Release(release) => match self.release(&mut link.commands, &release).await {
                Err(error) if !is_server_error(&error) => {
                    self.pending_releases.push_back(release);
                    Err(error)
                }
                _ => Ok(()),
            },
            Control::RoomEmpty { room } => {
                // Decided now, not when asked: a joiner may have arrived since.
                if self.subscribed.contains(&room) && hub.is_idle(&room) {
                    self.subscribed.remove(&room);
                    hub.unsync(&room);
                    let channel = RoomKeys::new(&room).channel;
                    bounded(RESPONSE_TIMEOUT, link.subscriptions.unsubscribe(channel)).await?;
                }
                Ok(())
            }
        }
    }

    /// Subscribes to `room` unless already, then brings it up to date from Redis unless it is.
    async fn subscribe(&mut self, hub: &Hub, link: &mut Link, room: &Arc<str>) -> RedisResult<()> {
        let keys = RoomKeys::new(room);
        if !self.subscribed.contains(room) {
            // Subscribe first, then read: whatever is published in between arrives both ways,
            // and ids sort it out; read first and it could be missed.
            bounded(
                RESPONSE_TIMEOUT,
                link.subscriptions.subscribe(&keys.channel),
            )
            .await?;
            self.subscribed.insert(Arc::clone(room));
        }
        if hub.is_synced(room) {
            return Ok(());
        }
        let Some(generation) = hub.generation(room) else {
            return Ok(()); // evicted meanwhile: nobody here needs it
        };
        let floor = hub.last_delivered(room, true).unwrap_or(0);
        let (seq, frames): (u64, Vec<Vec<u8>>) = self
            .cluster
            .scripts
            .sync
            .key(&keys.seq)
            .key(&keys.history)
            .arg(floor)
            .arg(self.cluster.ttl_millis())
            .invoke_async(&mut link.commands)
            .await?;
        self.apply_history(hub, room, frames, seq);
        hub.mark_synced(room, generation);
        Ok(())
    }

    /// Delivers frames from the subscription, in the order they arrived. A room's messages
    /// that follow one another are handed to the hub together; a jump is refilled from history
    /// first, and a `join` or `leave` goes out after the messages before it.
    async fn dispatch(
        &mut self,
        hub: &Hub,
        connection: &mut MultiplexedConnection,
        arrived: Vec<redis::Msg>,
    ) -> RedisResult<()> {
        let mut ready = ReadyFrames::default();
        for message in arrived {
            let channel = message.get_channel_name();
            let Some(room) = channel
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.strip_prefix("room:"))
            else {
                continue;
            };
            let Ok(frame) = std::str::from_utf8(message.get_payload_bytes()) else {
                continue;
            };
            let frame = Utf8Bytes::from(frame.to_owned());
            match RoomFrame::of(&frame) {
                Some(RoomFrame::Message { id }) => {
                    // Not synced: unsubscribed meanwhile, or not yet brought up to date; either
                    // way the room is refilled from history when it is synced.
                    let Some(last) = ready.last(room).or_else(|| hub.last_delivered(room, false))
                    else {
                        continue;
                    };
                    if id <= last {
                        continue; // already delivered (refilled, or seen while syncing)
                    }
                    if id > last + 1 {
                        ready.flush(hub, room);
                        let missed: Vec<Vec<u8>> = redis::cmd("ZRANGEBYSCORE")
                            .arg(RoomKeys::new(room).history)
                            .arg(last + 1)
                            .arg(id - 1)
                            .query_async(connection)
                            .await?;
                        self.apply_history(hub, room, missed, id - 1);
                    }
                    ready.push(room, id, frame);
                }
                Some(RoomFrame::Join { user }) => {
                    ready.flush(hub, room);
                    hub.deliver_presence(room, frame, Some(&user));
                }
                Some(RoomFrame::Leave { .. }) => {
                    ready.flush(hub, room);
                    hub.deliver_presence(room, frame, None);
                }
                None => tracing::debug!(room, "ignored an unknown frame on a room channel"),
            }
        }
        ready.flush_all(hub);
        Ok(())
    }

    /// Delivers stored frames (in id order) that the node has not delivered yet, and announces
    /// whatever is missing up to `upto`.
    fn apply_history(&self, hub: &Hub, room: &str, frames: Vec<Vec<u8>>, upto: u64) {
        for raw in frames {
            let Ok(frame) = String::from_utf8(raw) else {
                continue;
            };
            let Some(RoomFrame::Message { id }) = RoomFrame::of(&frame) else {
                continue;
            };
            hub.deliver_message(room, id, Utf8Bytes::from(frame), true);
        }
        hub.close_gap(room, upto);
    }

    /// Renews the lease; true when it had been missing (the node was declared dead, or Redis
    /// lost its data).
    async fn renew(&self, connection: &mut MultiplexedConnection) -> RedisResult<bool> {
        let lease = self.cluster.settings.node_timeout * LEASE_TICKS / TICKS_PER_TIMEOUT;
        let lease = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let added: u64 = self
            .cluster
            .scripts
            .renew
            .key(NODES_KEY)
            .arg(&self.cluster.node)
            .arg(lease)
            .invoke_async(connection)
            .await?;
        Ok(added == 1)
    }

    /// Makes the names Redis records for this node the ones it really holds: names it lost
    /// (Redis lost its data, or the node was declared dead) are claimed again with a `join`,
    /// names it no longer has (an older snapshot of Redis) are released with a `leave`.
    async fn reconcile(
        &self,
        hub: &Hub,
        connection: &mut MultiplexedConnection,
    ) -> RedisResult<()> {
        let cluster = &self.cluster;
        let recorded: HashSet<String> = redis::cmd("SMEMBERS")
            .arg(&cluster.node_members_key)
            .query_async(connection)
            .await?;
        let held = hub.held_names();
        let mut entries = HashSet::with_capacity(held.len());
        for (room, name, holder) in held {
            let entry = format!("{room}/{name}");
            if !recorded.contains(&entry) {
                self.claim_again(connection, &room, &name, holder).await?;
            }
            entries.insert(entry);
        }
        for entry in recorded.difference(&entries) {
            let Some((room, name)) = entry.split_once('/') else {
                continue;
            };
            let owner: Option<String> = redis::cmd("HGET")
                .arg(RoomKeys::new(room).owners())
                .arg(name)
                .query_async(connection)
                .await?;
            let Some(connection_id) = owner
                .as_deref()
                .and_then(|owner| owner.strip_prefix(cluster.node.as_str()))
                .and_then(|rest| rest.strip_prefix('/'))
                .and_then(|id| id.parse().ok())
            else {
                // Not this node's any more: only the stale entry goes.
                redis::cmd("SREM")
                    .arg(&cluster.node_members_key)
                    .arg(entry)
                    .query_async::<()>(connection)
                    .await?;
                continue;
            };
            let releasing = lock(&cluster.releasing)
                .values()
                .any(|&(releasing, _)| releasing == connection_id);
            if cluster.claim_in_flight(connection_id) || releasing {
                // A handshake about to learn its claim succeeded, or a release on its way.
                continue;
            }
            let release = Release {
                room: Arc::from(room),
                name: name.to_owned(),
                connection: connection_id,
                announce: true,
            };
            self.release(connection, &release).await?;
        }
        Ok(())
    }

    async fn claim_again(
        &self,
        connection: &mut MultiplexedConnection,
        room: &str,
        name: &str,
        holder: u64,
    ) -> RedisResult<()> {
        let join = join_frame(room, name);
        let claimed = self
            .cluster
            .run_claim(connection, room, Some(name), holder, &join)
            .await?;
        if claimed.is_none() {
            // Someone elsewhere took the name while this node was cut off. Both stay
            // connected; the newcomer owns the name in the cluster's member list.
            tracing::warn!(
                room,
                user = name,
                "name taken elsewhere while this node was away"
            );
        }
        Ok(())
    }

    async fn release(
        &self,
        connection: &mut MultiplexedConnection,
        release: &Release,
    ) -> RedisResult<()> {
        let cluster = &self.cluster;
        let room = &*release.room;
        let keys = RoomKeys::new(room);
        let leave = if release.announce && !release.name.is_empty() {
            leave_frame(room, &release.name)
        } else {
            String::new()
        };
        let _: u64 = cluster
            .scripts
            .release
            .key(keys.owners())
            .key(keys.members())
            .key(&cluster.node_members_key)
            .key(&keys.seq)
            .key(&keys.history)
            .arg(&release.name)
            .arg(cluster.holder(release.connection))
            .arg(room)
            .arg(leave)
            .arg(&keys.channel)
            .arg(cluster.ttl_millis())
            .invoke_async(connection)
            .await?;
        let mut releasing = lock(&cluster.releasing);
        let key = (Arc::clone(&release.room), release.name.clone());
        if releasing
            .get(&key)
            .is_some_and(|&(connection, _)| connection == release.connection)
        {
            releasing.remove(&key);
        }
        Ok(())
    }

    /// Removes every name the node still holds (with a `leave` each) and its lease, in one
    /// script, so the other nodes' members hear at once that its members are gone.
    async fn goodbye(&mut self, connection: &mut MultiplexedConnection) {
        while let Ok(request) = self.requests.try_recv() {
            if let Control::Subscribe { synced, .. } = request {
                let _ = synced.send(Err(Unavailable));
            }
        }
        let reaped: RedisResult<u64> = self
            .cluster
            .scripts
            .reap
            .key(NODES_KEY)
            .arg(self.cluster.ttl_millis())
            .arg(&self.cluster.node)
            .invoke_async(connection)
            .await;
        if let Err(error) = reaped {
            tracing::warn!(%error, "could not remove this node's members from redis at shutdown");
        }
    }
}

/// Whether Redis answered with an error (the command ran and was refused), as opposed to not
/// answering at all.
fn is_server_error(error: &redis::RedisError) -> bool {
    matches!(error.kind(), redis::ErrorKind::Server(_))
}

/// Marks the node down when the driver ends for any reason, a panic included: with nobody to
/// deliver, posts must not be accepted.
struct DownOnExit(Arc<Cluster>);

impl Drop for DownOnExit {
    fn drop(&mut self) {
        self.0.up.store(false, Ordering::Release);
        self.0.metrics.redis_up(false);
    }
}

/// Awaits a Redis call for at most `limit`; running out counts as a lost link. (The errors of
/// the Redis client name what failed, never the URL it was given, so they are safe to log.)
async fn bounded<T>(
    limit: Duration,
    call: impl std::future::Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    timeout(limit, call)
        .await
        .unwrap_or_else(|_| Err(lost("redis did not answer in time")))
}

fn lost(why: &'static str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, why))
}
