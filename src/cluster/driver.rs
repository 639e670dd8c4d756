//! The one task per cluster node that owns the Redis link: connect and reconnect, keep the
//! node's lease, subscribe to the rooms it has members in, and deliver what arrives, in id
//! order, refilling from history whatever the subscription missed.
//!
//! Everything that touches the subscription or a room's last delivered id happens here, one
//! step at a time, so a refill can never race a live delivery. Connections reach the driver
//! through `Control` requests; posts and claims go straight to Redis on the shared connection.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, RedisResult};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use super::{
    join_frame, leave_frame, random_id, Cluster, Control, RoomKeys, Unavailable, EPOCH_KEY,
    NODES_KEY, PREFIX,
};
use crate::hub::{lock, Hub};
use crate::protocol::RoomFrame;

/// First wait before reconnecting; doubled after each failure up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest wait between reconnection attempts: SPEC §11 wants posting back within 10 s of
/// Redis's return, and a node retrying every 2 s at worst finds it well within that.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Bounds connecting and every command, so a Redis that stopped answering reads as down
/// instead of hanging handshakes and posts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// After Redis lost its data (restarted without persistence), a node waits this long before it
/// posts again, so that every other node (each retrying at most `MAX_BACKOFF` apart) has
/// reconnected and raised the room sequences to the ids its members saw. Without it, a node
/// that saw fewer ids could hand out an id another node's members already have.
pub(super) const DATA_LOSS_HOLD: Duration = Duration::from_secs(3);

/// Leases are renewed this many times per `--node-timeout`, so one late renewal is harmless.
const RENEWALS_PER_TIMEOUT: u32 = 3;

/// Runs a node's Redis link until the server stops. Created with its `Cluster`.
pub struct ClusterDriver {
    cluster: Arc<Cluster>,
    requests: mpsc::UnboundedReceiver<Control>,
    /// Rooms subscribed on the current link.
    subscribed: HashSet<Arc<str>>,
    /// Releases asked for while Redis was away, done when it is back.
    pending_releases: Vec<(Arc<str>, String, bool)>,
    /// The epoch of the data set this node last saw.
    epoch: Option<String>,
}

/// The two connections of one link: commands, and the subscription.
struct Link {
    commands: MultiplexedConnection,
    subscriptions: PubSubSink,
    messages: PubSubStream,
}

impl ClusterDriver {
    pub(super) fn new(cluster: Arc<Cluster>, requests: mpsc::UnboundedReceiver<Control>) -> Self {
        Self {
            cluster,
            requests,
            subscribed: HashSet::new(),
            pending_releases: Vec::new(),
            epoch: None,
        }
    }

    /// Keeps the link up until `stop`, then removes the node's members and lease (its goodbye)
    /// and returns. Call `stop` only once the node's connections have ended, so their `leave`s
    /// are queued before the goodbye.
    pub async fn run(mut self, hub: Hub, stop: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        let mut ever_connected = false;
        // One warning per outage; the retries after it are logged at debug level.
        let mut outage_reported = false;
        loop {
            let connected = tokio::select! {
                () = stop.cancelled() => return,
                connected = self.connect() => connected,
            };
            let mut link = match connected {
                Ok(link) => link,
                Err(error) => {
                    if outage_reported {
                        tracing::debug!(error = %RedactedError(&error), retry_in = ?backoff, "cannot reach redis");
                    } else {
                        tracing::warn!(error = %RedactedError(&error), "cannot reach redis; retrying with backoff up to 2s");
                        outage_reported = true;
                    }
                    if self.wait_while_down(backoff, &stop).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            *lock(&self.cluster.link) = Some(link.commands.clone());
            if let Err(error) = self.restore(&hub, &mut link).await {
                tracing::warn!(error = %RedactedError(&error), "redis failed while the link was being restored");
                self.link_lost();
                if self.wait_while_down(backoff, &stop).await {
                    return;
                }
                continue;
            }
            backoff = FIRST_BACKOFF;
            outage_reported = false;
            if ever_connected {
                self.cluster.metrics.redis_reconnected();
            }
            ever_connected = true;
            self.cluster.up.store(true, Ordering::Release);
            self.cluster.metrics.redis_up(true);
            tracing::info!("redis link up");

            match self.serve(&hub, &mut link, &stop).await {
                Ok(()) => {
                    self.goodbye(&mut link.commands).await;
                    self.link_lost();
                    return;
                }
                Err(error) => {
                    tracing::warn!(error = %RedactedError(&error), "redis link lost");
                    self.link_lost();
                }
            }
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
        let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, self.cluster.client.get_async_pubsub())
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "subscription connection timed out",
                ))
            })??;
        let (subscriptions, messages) = pubsub.split();
        Ok(Link {
            commands,
            subscriptions,
            messages,
        })
    }

    /// Marks the link down: posts and handshakes are refused until `restore` succeeds again.
    fn link_lost(&mut self) {
        self.cluster.up.store(false, Ordering::Release);
        self.cluster.metrics.redis_up(false);
        *lock(&self.cluster.link) = None;
        self.subscribed.clear();
    }

    /// Waits `period` (or until `stop`, returning true) while answering requests as a node
    /// without Redis does: subscriptions fail, releases wait for the link.
    async fn wait_while_down(&mut self, period: Duration, stop: &CancellationToken) -> bool {
        let until = Instant::now() + period;
        loop {
            tokio::select! {
                () = stop.cancelled() => return true,
                () = sleep_until(until) => return false,
                Some(request) = self.requests.recv() => self.refuse(request),
            }
        }
    }

    fn refuse(&mut self, request: Control) {
        match request {
            Control::Subscribe { synced, .. } => {
                let _ = synced.send(Err(Unavailable));
            }
            Control::Release {
                room,
                name,
                announce,
            } => self.pending_releases.push((room, name, announce)),
            Control::RoomEmpty { .. } => {}
        }
    }

    /// Brings a fresh link to where the node was: lease, queued releases, members (if Redis
    /// forgot them), subscriptions, and every room refilled up to Redis's last id.
    async fn restore(&mut self, hub: &Hub, link: &mut Link) -> RedisResult<()> {
        let cluster = Arc::clone(&self.cluster);
        let connection = &mut link.commands;
        let epoch: String = cluster
            .scripts
            .epoch
            .key(EPOCH_KEY)
            .arg(random_id())
            .invoke_async(connection)
            .await?;
        let data_lost = self.epoch.as_ref().is_some_and(|known| *known != epoch);
        self.epoch = Some(epoch);
        if data_lost {
            tracing::warn!(hold = ?DATA_LOSS_HOLD, "redis lost its data; posting waits for the other nodes");
            *lock(&cluster.posts_held_until) = Some(Instant::now() + DATA_LOSS_HOLD);
        }
        let lease_was_missing = self.renew(connection).await?;
        while let Some((room, name, announce)) = self.pending_releases.last().cloned() {
            self.release(connection, &room, &name, announce).await?;
            self.pending_releases.pop();
        }
        if lease_was_missing {
            self.register_members(hub, connection).await?;
        }
        for room in hub.occupied_rooms() {
            self.subscribe(hub, link, &room).await?;
        }
        Ok(())
    }

    /// Serves the live link until it fails (`Err`) or `stop` (`Ok`).
    async fn serve(
        &mut self,
        hub: &Hub,
        link: &mut Link,
        stop: &CancellationToken,
    ) -> RedisResult<()> {
        let period = self.cluster.settings.node_timeout / RENEWALS_PER_TIMEOUT;
        let mut lease = tokio::time::interval_at(Instant::now() + period, period);
        lease.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                message = link.messages.next() => match message {
                    Some(message) => self.dispatch(hub, &mut link.commands, message).await?,
                    None => return Err(lost("the subscription connection closed")),
                },
                Some(request) = self.requests.recv() => self.handle(hub, link, request).await?,
                _ = lease.tick() => {
                    if self.renew(&mut link.commands).await? {
                        tracing::warn!("this node's lease had expired; registering its members again");
                        self.register_members(hub, &mut link.commands).await?;
                    }
                    let removed: u64 = self.cluster.scripts.reap.key(NODES_KEY)
                        .arg(self.cluster.ttl_millis())
                        .arg("")
                        .invoke_async(&mut link.commands)
                        .await?;
                    if removed > 0 {
                        tracing::info!(removed, "removed the members of nodes whose lease expired");
                    }
                }
            }
        }
    }

    async fn handle(&mut self, hub: &Hub, link: &mut Link, request: Control) -> RedisResult<()> {
        match request {
            Control::Subscribe { room, synced } => {
                let result = self.subscribe(hub, link, &room).await;
                let _ = synced.send(result.as_ref().map(|_| ()).map_err(|_| Unavailable));
                result
            }
            Control::Release {
                room,
                name,
                announce,
            } => {
                let released = self
                    .release(&mut link.commands, &room, &name, announce)
                    .await;
                if released.is_err() {
                    self.pending_releases.push((room, name, announce));
                }
                released
            }
            Control::RoomEmpty { room } => {
                if self.subscribed.contains(&room) && !hub.has_members(&room) {
                    self.subscribed.remove(&room);
                    link.subscriptions
                        .unsubscribe(RoomKeys::new(&room).channel)
                        .await?;
                }
                Ok(())
            }
        }
    }

    /// Subscribes to `room` unless already, then brings it up to date from Redis.
    async fn subscribe(&mut self, hub: &Hub, link: &mut Link, room: &Arc<str>) -> RedisResult<()> {
        if self.subscribed.contains(room) {
            return Ok(());
        }
        let keys = RoomKeys::new(room);
        // Subscribe first, then read: whatever is published in between arrives both ways, and
        // ids sort it out; read first and it could be missed.
        link.subscriptions.subscribe(&keys.channel).await?;
        self.subscribed.insert(Arc::clone(room));
        let floor = hub.last_delivered(room).unwrap_or(0);
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
        Ok(())
    }

    /// Delivers one frame from the subscription.
    async fn dispatch(
        &mut self,
        hub: &Hub,
        connection: &mut MultiplexedConnection,
        message: redis::Msg,
    ) -> RedisResult<()> {
        let Some(room) = message
            .get_channel_name()
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_prefix("room:"))
        else {
            return Ok(());
        };
        let Some(room) = self.subscribed.get(room).cloned() else {
            // Unsubscribed meanwhile: the room is brought up to date when it is subscribed again.
            return Ok(());
        };
        let Ok(frame) = std::str::from_utf8(message.get_payload_bytes()) else {
            return Ok(());
        };
        let frame = Utf8Bytes::from(frame.to_owned());
        match RoomFrame::of(&frame) {
            Some(RoomFrame::Message { id }) => {
                let Some(last) = hub.last_delivered(&room) else {
                    return Ok(());
                };
                if id <= last {
                    return Ok(()); // already delivered (refilled, or seen while syncing)
                }
                if id > last + 1 {
                    let missed: Vec<Vec<u8>> = redis::cmd("ZRANGEBYSCORE")
                        .arg(RoomKeys::new(&room).history)
                        .arg(last + 1)
                        .arg(id - 1)
                        .query_async(connection)
                        .await?;
                    self.apply_history(hub, &room, missed, id - 1);
                }
                hub.deliver_message(&room, id, frame, false);
            }
            Some(RoomFrame::Join { user }) => hub.deliver_presence(&room, frame, Some(&user)),
            Some(RoomFrame::Leave { .. }) => hub.deliver_presence(&room, frame, None),
            None => tracing::debug!(room = %room, "ignored an unknown frame on a room channel"),
        }
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

    /// Renews the lease; true when it had been missing.
    async fn renew(&self, connection: &mut MultiplexedConnection) -> RedisResult<bool> {
        let timeout =
            u64::try_from(self.cluster.settings.node_timeout.as_millis()).unwrap_or(u64::MAX);
        let added: u64 = self
            .cluster
            .scripts
            .renew
            .key(NODES_KEY)
            .arg(&self.cluster.node)
            .arg(timeout)
            .invoke_async(connection)
            .await?;
        Ok(added == 1)
    }

    /// Claims every local member's name again, announcing those Redis had forgotten.
    async fn register_members(
        &self,
        hub: &Hub,
        connection: &mut MultiplexedConnection,
    ) -> RedisResult<()> {
        let cluster = &self.cluster;
        for (room, name) in hub.local_members() {
            let keys = RoomKeys::new(&room);
            let claimed: Option<(String, i64)> = cluster
                .scripts
                .claim
                .key(&keys.owners)
                .key(&keys.members)
                .key(&cluster.node_members_key)
                .key(super::GUESTS_KEY)
                .arg(&name)
                .arg(&cluster.node)
                .arg(&*room)
                .arg(join_frame(&room, &name))
                .arg(&keys.channel)
                .invoke_async(connection)
                .await?;
            if claimed.is_none() {
                // Someone elsewhere took the name while this node was cut off. Both stay
                // connected; the newcomer owns the name in the cluster's member list.
                tracing::warn!(room = %room, user = %name, "name taken elsewhere while this node was away");
            }
        }
        Ok(())
    }

    async fn release(
        &self,
        connection: &mut MultiplexedConnection,
        room: &str,
        name: &str,
        announce: bool,
    ) -> RedisResult<()> {
        let cluster = &self.cluster;
        let keys = RoomKeys::new(room);
        let leave = if announce {
            leave_frame(room, name)
        } else {
            String::new()
        };
        let _: u64 = cluster
            .scripts
            .release
            .key(&keys.owners)
            .key(&keys.members)
            .key(&cluster.node_members_key)
            .key(&keys.seq)
            .key(&keys.history)
            .arg(name)
            .arg(&cluster.node)
            .arg(room)
            .arg(leave)
            .arg(&keys.channel)
            .arg(cluster.ttl_millis())
            .invoke_async(connection)
            .await?;
        Ok(())
    }

    /// Releases what the node's ended connections asked for, then removes whatever else the
    /// node still holds and its lease, so the other nodes hear every `leave` at once.
    async fn goodbye(&mut self, connection: &mut MultiplexedConnection) {
        while let Ok(request) = self.requests.try_recv() {
            match request {
                Control::Subscribe { synced, .. } => {
                    let _ = synced.send(Err(Unavailable));
                }
                Control::Release {
                    room,
                    name,
                    announce,
                } => self.pending_releases.push((room, name, announce)),
                Control::RoomEmpty { .. } => {}
            }
        }
        for (room, name, announce) in std::mem::take(&mut self.pending_releases) {
            if let Err(error) = self.release(connection, &room, &name, announce).await {
                tracing::warn!(error = %RedactedError(&error), "could not remove a member from redis at shutdown");
                return;
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
            tracing::warn!(error = %RedactedError(&error), "could not remove this node's lease at shutdown");
        }
    }
}

fn lost(why: &'static str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        why,
    ))
}

/// A Redis error for a log line. The client's errors name what failed, not the URL it was
/// given, so a password in `--redis-url` cannot reach the log through them.
struct RedactedError<'a>(&'a redis::RedisError);

impl std::fmt::Display for RedactedError<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self.0, f)
    }
}
