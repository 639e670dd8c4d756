//! The four scenarios. Each returns a `Report`; errors are one-line strings for `main`.
//!
//! Against a cluster, client `i` of a scenario connects to node `i mod nodes`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::procfs::{rss_kib, CpuMeter};
use crate::stats::Report;
use crate::{Carrier, Protocol};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where and how to connect.
pub struct Target {
    /// One URL per node (a single server is a cluster of one); clap gives at least one.
    pub urls: Vec<String>,
    pub token: String,
    /// Where every client puts its token.
    pub carrier: Carrier,
    pub protocol: Protocol,
    /// The server's processes, one per node; CPU and memory figures are summed over them.
    pub server_pids: Vec<u32>,
    /// The cluster's `redis-server`, for its CPU time per posted message.
    pub redis_pid: Option<u32>,
    /// Unique per run, so rooms (and their history) from earlier runs never interfere.
    pub run: String,
}

impl Target {
    fn nodes(&self) -> usize {
        self.urls.len().max(1)
    }

    /// The node client number `client` connects to: round-robin over the nodes.
    fn node_of(&self, client: usize) -> usize {
        client % self.nodes()
    }

    /// How client number `client` connects, with `token` in the target's carrier, to `room`.
    fn dial(&self, client: usize, token: &str, room: &str) -> Result<Dial, String> {
        let mut query = form_urlencoded::Serializer::new(String::new());
        let header = match self.carrier {
            Carrier::Query => {
                query.append_pair("token", token);
                None
            }
            Carrier::Header => Some((AUTHORIZATION, format!("Bearer {token}"))),
            Carrier::Subprotocol => {
                Some((SEC_WEBSOCKET_PROTOCOL, format!("wschat, bearer.{token}")))
            }
        };
        let header = header
            .map(|(name, value)| {
                HeaderValue::from_str(&value)
                    .map(|value| (name, value))
                    .map_err(|_| "the token cannot be sent in a header".to_owned())
            })
            .transpose()?;
        let query = query.append_pair("room", room).finish();
        let base = self
            .urls
            .get(self.node_of(client))
            .map_or("", String::as_str);
        Ok(Dial {
            url: format!("{base}?{query}"),
            header,
        })
    }
}

/// One client's way in: the URL and, unless the token is in the query, the header carrying it.
/// A fresh request (with a fresh `Sec-WebSocket-Key`) is built from it for every connection.
#[derive(Clone)]
struct Dial {
    url: String,
    header: Option<(HeaderName, HeaderValue)>,
}

/// Starts every message text, so a receiver can find sender, sequence and send time in any
/// framing (inside wschat's JSON, or as the raw frame of a peer).
const MARKER: &str = "#lt:";

/// How long a `fanout` receiver waits for the next frame before it counts the rest as lost.
const QUIET_TIMEOUT: Duration = Duration::from_secs(3);

/// Time base shared by all senders and receivers of this process.
fn micros_since(base: Instant) -> u64 {
    base.elapsed().as_micros() as u64
}

async fn connect(dial: &Dial) -> Result<Socket, WsError> {
    let mut request = dial.url.as_str().into_client_request()?;
    if let Some((name, value)) = &dial.header {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    tokio_tungstenite::connect_async_with_config(request, None, true)
        .await
        .map(|(socket, _)| socket)
}

/// `handshake` (good token) and `reject` (bad token): C workers open, complete and close
/// connections until N are done. Each worker uses its own room, so this measures admission,
/// not the join/leave fan-out (that is what `fanout` is for); worker `w` uses node `w mod nodes`.
pub async fn handshake(
    target: &Target,
    connections: u64,
    concurrency: u64,
    authenticated: bool,
) -> Result<Report, String> {
    let next = Arc::new(AtomicU64::new(0));
    let outcomes = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let data_frames = Arc::new(AtomicU64::new(0));
    let token = if authenticated {
        target.token.clone()
    } else {
        format!("{}-wrong", target.token)
    };
    let meter = CpuMeter::start(&target.server_pids);
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let dial = target.dial(
            worker as usize,
            &token,
            &format!("hs-{}-{worker}", target.run),
        )?;
        let (next, outcomes, data_frames) = (next.clone(), outcomes.clone(), data_frames.clone());
        let protocol = target.protocol;
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < connections {
                let opened = Instant::now();
                let outcome = match connect(&dial).await {
                    Ok(mut socket) => {
                        latencies.push(opened.elapsed().as_micros() as u64);
                        complete(&mut socket, protocol, authenticated, &data_frames).await
                    }
                    Err(WsError::Http(response)) => format!("http_{}", response.status().as_u16()),
                    Err(error) => format!("error: {error}"),
                };
                *outcomes.lock().await.entry(outcome).or_default() += 1;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.map_err(|error| error.to_string())?);
    }
    let elapsed = started.elapsed();
    let mut report = Report::default();
    report
        .set(
            "scenario",
            if authenticated { "handshake" } else { "reject" },
        )
        .set("connections", connections)
        .set("concurrency", concurrency)
        .set("carrier", target.carrier.name())
        .set(
            "per_sec",
            (connections as f64 / elapsed.as_secs_f64()).round(),
        )
        .set(
            "data_frames_to_rejected",
            if authenticated {
                0
            } else {
                data_frames.load(Ordering::Relaxed)
            },
        );
    for (outcome, count) in outcomes.lock().await.iter() {
        report.set(format!("outcome_{outcome}"), *count);
    }
    if let Some(cpu) = meter.per_op_micros(connections) {
        report.set("server_cpu_us_per_op", (cpu * 10.0).round() / 10.0);
    }
    report.latencies("handshake", latencies);
    Ok(report)
}

/// After a `101`: an accepted wschat client reads its `welcome`; everyone then closes and
/// waits for the server's answer. A rejected client must see nothing but a close frame.
async fn complete(
    socket: &mut Socket,
    protocol: Protocol,
    authenticated: bool,
    data_frames: &AtomicU64,
) -> String {
    if authenticated && protocol == Protocol::Wschat {
        match socket.next().await {
            Some(Ok(Message::Text(text))) if text.starts_with(r#"{"type":"welcome""#) => {}
            other => return format!("no_welcome: {other:?}"),
        }
    }
    if authenticated {
        let _ = socket.close(None).await;
    }
    let mut closed_by_server = None;
    while let Some(Ok(message)) = socket.next().await {
        match message {
            Message::Close(frame) => {
                closed_by_server = Some(frame.map_or(1005, |f| u16::from(f.code)))
            }
            Message::Text(_) | Message::Binary(_) => {
                data_frames.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    match (authenticated, closed_by_server) {
        (true, _) => "accepted".to_owned(),
        (false, Some(code)) => format!("upgraded_then_closed_{code}"),
        (false, None) => "upgraded_then_dropped".to_owned(),
    }
}

/// What one receiver saw during `fanout`.
#[derive(Default)]
struct Received {
    count: u64,
    /// Messages that did not come next in their sender's sequence (a loss, a duplicate or a
    /// reordering of one sender's messages).
    out_of_order: u64,
    /// wschat only: messages whose `id` was not one above the previous message's, so this
    /// receiver's order is not the room's one global order.
    id_breaks: u64,
    /// wschat only: `gap` events (a cluster node announcing ids it could not deliver).
    gaps: u64,
    /// The order this receiver saw, as a hash of every message's id, sender and sequence number:
    /// receivers that saw the same messages in the same order have the same one.
    order: OrderHash,
    latencies: Vec<u64>,
    /// Latencies of the messages sent through another node than this receiver's.
    cross_node_latencies: Vec<u64>,
}

/// FNV-1a over the sequence of messages a receiver saw, in the order it saw them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct OrderHash(u64);

impl Default for OrderHash {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl OrderHash {
    fn add(&mut self, value: u64) {
        for byte in value.to_le_bytes() {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// `fanout`: N members; the first K send M messages each (burst, or paced to `rate`
/// deliveries per second in total). Member `i` connects to node `i mod nodes`, so senders are
/// spread over the nodes too. Every member, senders included, must receive every message,
/// each sender's in order; with wschat every member must also see the room's ids one apart
/// (the one order Redis, or the single node, gave them), and all members the same messages
/// in the same order.
pub async fn fanout(
    target: &Target,
    members: usize,
    senders: usize,
    messages: u64,
    rate: u64,
    size: usize,
) -> Result<Report, String> {
    if senders == 0 || senders > members {
        return Err("--senders must be between 1 and --members".into());
    }
    let room = format!("fan-{}", target.run);
    let expected = senders as u64 * messages;
    let sender_nodes: Arc<[usize]> = (0..senders).map(|sender| target.node_of(sender)).collect();
    let base = Instant::now();
    let mut sinks = Vec::new();
    let mut readers = Vec::new();
    for member in 0..members {
        let socket = connect(&target.dial(member, &target.token, &room)?)
            .await
            .map_err(|error| format!("connect member {member}: {error}"))?;
        let (sink, stream) = socket.split();
        sinks.push(sink);
        let reader = Reader {
            protocol: target.protocol,
            node: target.node_of(member),
            sender_nodes: Arc::clone(&sender_nodes),
            expected,
            base,
        };
        readers.push(tokio::spawn(reader.receive(stream)));
    }
    sinks.truncate(senders);

    let meter = CpuMeter::start(&target.server_pids);
    let redis_meter = CpuMeter::start(target.redis_pid.as_slice());
    let started = Instant::now();
    // Paced: each sender sends one message every `period`, so that all of them together
    // cause `rate` deliveries per second; sender `k` of K starts `k/K` of a period late.
    let period =
        (rate > 0).then(|| Duration::from_secs_f64(members as f64 * senders as f64 / rate as f64));
    let start = tokio::time::Instant::now();
    let sending: Vec<_> = sinks
        .into_iter()
        .enumerate()
        .map(|(sender, sink)| {
            let pacing = period.map(|period| Pacing {
                period,
                first: start + period.mul_f64(sender as f64 / senders as f64),
            });
            tokio::spawn(send(sink, sender, messages, pacing, size, base))
        })
        .collect();
    // The senders' sinks stay open until every receiver is done.
    let mut open_sinks = Vec::new();
    for task in sending {
        let sink = task.await.map_err(|error| error.to_string())?;
        open_sinks.push(sink.map_err(|error| format!("send: {error}"))?);
    }
    let mut total = Received::default();
    let mut complete_receivers = 0;
    let mut orders = HashMap::<OrderHash, u64>::new();
    for reader in readers {
        let received = reader.await.map_err(|error| error.to_string())?;
        complete_receivers += u64::from(
            received.count == expected
                && received.out_of_order == 0
                && received.id_breaks == 0
                && received.gaps == 0,
        );
        *orders.entry(received.order).or_default() += 1;
        total.count += received.count;
        total.out_of_order += received.out_of_order;
        total.id_breaks += received.id_breaks;
        total.gaps += received.gaps;
        total.latencies.extend(received.latencies);
        total
            .cross_node_latencies
            .extend(received.cross_node_latencies);
    }
    let elapsed = started.elapsed();
    drop(open_sinks);
    // Receivers that did not see what most of them saw, in the order most of them saw it.
    let in_common_order = orders.values().copied().max().unwrap_or(0);
    let deliveries = total.count;
    let deliveries_expected = expected * members as u64;
    let mut report = Report::default();
    report
        .set(
            "scenario",
            if rate > 0 {
                "fanout_paced"
            } else {
                "fanout_burst"
            },
        )
        .set("nodes", target.nodes())
        .set("members", members)
        .set("senders", senders)
        .set("messages_per_sender", messages)
        .set("messages_posted", expected)
        .set("deliveries", deliveries)
        .set("deliveries_expected", deliveries_expected)
        .set(
            "lost",
            deliveries_expected - deliveries.min(deliveries_expected),
        )
        .set("out_of_order", total.out_of_order)
        .set(
            "receivers_in_another_order",
            members as u64 - in_common_order,
        )
        .set("complete_receivers", complete_receivers)
        .set(
            "deliveries_per_sec",
            (deliveries as f64 / elapsed.as_secs_f64()).round(),
        )
        .set(
            "messages_per_sec",
            (expected as f64 / elapsed.as_secs_f64()).round(),
        );
    if target.protocol == Protocol::Wschat {
        report
            .set("id_order_breaks", total.id_breaks)
            .set("gap_events", total.gaps);
    }
    if rate > 0 {
        report.set("target_deliveries_per_sec", rate);
    }
    if let Some(cpu) = meter.per_op_micros(deliveries) {
        report.set("server_cpu_us_per_delivery", (cpu * 100.0).round() / 100.0);
    }
    if let Some(cpu) = redis_meter.per_op_micros(expected) {
        report.set("redis_cpu_us_per_message", (cpu * 100.0).round() / 100.0);
    }
    if let Some(spent) = redis_meter.spent() {
        // How busy Redis was: 1.0 is one core for the whole run.
        report.set(
            "redis_cpu_share",
            (spent.as_secs_f64() / elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        );
    }
    report.latencies("latency", total.latencies);
    if target.nodes() > 1 {
        report.latencies("cross_node_latency", total.cross_node_latencies);
    }
    Ok(report)
}

/// When a paced sender sends: its first message at `first`, then one every `period`.
struct Pacing {
    period: Duration,
    first: tokio::time::Instant,
}

/// Sends `messages` marked texts, as fast as the socket takes them or paced.
async fn send(
    mut sink: SplitSink<Socket, Message>,
    sender: usize,
    messages: u64,
    pacing: Option<Pacing>,
    size: usize,
    base: Instant,
) -> Result<SplitSink<Socket, Message>, WsError> {
    let mut ticker = pacing.map(|Pacing { period, first }| {
        let mut ticker = tokio::time::interval_at(first, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        ticker
    });
    for seq in 0..messages {
        if let Some(ticker) = ticker.as_mut() {
            ticker.tick().await;
        }
        let mut text = format!("{MARKER}{sender}:{seq}:{}#", micros_since(base));
        if text.len() < size {
            text.push_str(&"x".repeat(size - text.len()));
        }
        if ticker.is_some() {
            sink.send(Message::text(text)).await?;
        } else {
            sink.feed(Message::text(text)).await?;
        }
    }
    sink.flush().await?;
    Ok(sink)
}

/// One `fanout` member's reading side.
struct Reader {
    protocol: Protocol,
    /// The node this member is connected to.
    node: usize,
    /// The node each sender is connected to, by sender number.
    sender_nodes: Arc<[usize]>,
    /// Messages to receive: every sender's, this member's own included.
    expected: u64,
    base: Instant,
}

impl Reader {
    /// Reads until `expected` messages arrived (or the stream ends, or goes quiet), checking
    /// each sender's order and, with wschat, that ids follow one another.
    async fn receive(self, mut stream: SplitStream<Socket>) -> Received {
        let mut received = Received {
            latencies: Vec::with_capacity(self.expected as usize),
            ..Received::default()
        };
        let mut next_seq = vec![0_u64; self.sender_nodes.len()];
        let mut last_id = None;
        while received.count < self.expected {
            // A server that dropped messages never sends the rest: stop after a quiet spell.
            let Ok(Some(Ok(message))) = tokio::time::timeout(QUIET_TIMEOUT, stream.next()).await
            else {
                break;
            };
            let Message::Text(text) = message else {
                continue;
            };
            if text.starts_with(r#"{"type":"welcome""#) {
                continue; // its history belongs to nobody in this run
            }
            if text.starts_with(r#"{"type":"gap""#) {
                received.gaps += 1;
                continue;
            }
            let Some((sender, seq, sent)) = parse_marker(&text) else {
                continue;
            };
            received.count += 1;
            let latency = micros_since(self.base).saturating_sub(sent);
            received.latencies.push(latency);
            if self
                .sender_nodes
                .get(sender)
                .is_some_and(|&node| node != self.node)
            {
                received.cross_node_latencies.push(latency);
            }
            match next_seq.get_mut(sender) {
                Some(next) if *next == seq => *next += 1,
                _ => received.out_of_order += 1,
            }
            if self.protocol == Protocol::Wschat {
                let id = message_id(&text);
                match (last_id, id) {
                    (_, None) => received.id_breaks += 1,
                    (Some(last), Some(id)) if id != last + 1 => received.id_breaks += 1,
                    _ => {}
                }
                last_id = id.or(last_id);
                received.order.add(id.unwrap_or(0));
            }
            received.order.add(sender as u64);
            received.order.add(seq);
        }
        received
    }
}

fn parse_marker(text: &str) -> Option<(usize, u64, u64)> {
    let rest = &text[text.find(MARKER)? + MARKER.len()..];
    let body = &rest[..rest.find('#')?];
    let mut parts = body.split(':');
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    ))
}

/// The `id` of a wschat `message` event, which the server always writes first after the type.
fn message_id(text: &str) -> Option<u64> {
    let rest = text.strip_prefix(r#"{"type":"message","id":"#)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

/// `idle`: opens N authenticated connections (rooms of `room_size`), lets the server settle,
/// and reports how much the server's memory grew per connection. Clients keep reading, so they
/// answer pings and drain join events like real idle clients.
pub async fn idle(
    target: &Target,
    connections: usize,
    room_size: usize,
    settle: Duration,
) -> Result<Report, String> {
    let before = rss_kib(&target.server_pids);
    let mut readers = Vec::with_capacity(connections);
    for index in 0..connections {
        let room = format!("idle-{}-{}", target.run, index / room_size.max(1));
        let socket = connect(&target.dial(index, &target.token, &room)?)
            .await
            .map_err(|error| format!("connect #{index}: {error}"))?;
        readers.push(tokio::spawn(async move {
            let mut socket = socket;
            while let Some(Ok(_)) = socket.next().await {}
        }));
    }
    tokio::time::sleep(settle).await;
    let after = rss_kib(&target.server_pids);
    let mut report = Report::default();
    report
        .set("scenario", "idle")
        .set("connections", connections)
        .set("room_size", room_size);
    if let (Some(before), Some(after)) = (before, after) {
        report
            .set("server_rss_before_kib", before)
            .set("server_rss_after_kib", after)
            .set(
                "kib_per_connection",
                ((after.saturating_sub(before)) as f64 / connections as f64 * 100.0).round()
                    / 100.0,
            );
    }
    for reader in readers {
        reader.abort();
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_found_inside_json_and_raw_frames() {
        let raw = "#lt:3:17:123456#xxxx";
        assert_eq!(parse_marker(raw), Some((3, 17, 123456)));
        let json =
            r##"{"type":"message","id":1,"room":"r","user":"u","text":"#lt:0:5:9#","ts":1}"##;
        assert_eq!(parse_marker(json), Some((0, 5, 9)));
        assert_eq!(parse_marker(r#"{"type":"join"}"#), None);
    }

    #[test]
    fn message_ids_are_read_from_wschat_message_events_only() {
        let json =
            r##"{"type":"message","id":4711,"room":"r","user":"u","text":"#lt:0:5:9#","ts":1}"##;
        assert_eq!(message_id(json), Some(4711));
        assert_eq!(message_id("#lt:3:17:123456#"), None);
        assert_eq!(
            message_id(r#"{"type":"join","room":"r","user":"u","ts":1}"#),
            None
        );
    }

    #[test]
    fn the_order_hash_tells_orders_apart() {
        let hash = |values: &[u64]| {
            let mut order = OrderHash::default();
            values.iter().for_each(|&value| order.add(value));
            order
        };
        assert!(hash(&[1, 0, 0, 2, 1, 0]) == hash(&[1, 0, 0, 2, 1, 0]));
        assert!(hash(&[1, 0, 0, 2, 1, 0]) != hash(&[2, 1, 0, 1, 0, 0]));
    }
}
