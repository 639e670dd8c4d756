//! The four scenarios. Each returns a `Report`; errors are one-line strings for `main`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::procfs::{rss_kib, CpuMeter};
use crate::stats::Report;
use crate::Protocol;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where and how to connect.
pub struct Target {
    pub url: String,
    pub token: String,
    pub protocol: Protocol,
    pub pid: Option<u32>,
    /// Unique per run, so rooms (and their history) from earlier runs never interfere.
    pub run: String,
}

impl Target {
    fn url(&self, token: &str, room: &str) -> String {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("room", room)
            .finish();
        format!("{}?{query}", self.url)
    }
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

async fn connect(url: &str) -> Result<Socket, WsError> {
    tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .map(|(socket, _)| socket)
}

/// `handshake` (good token) and `reject` (bad token): C workers open, complete and close
/// connections until N are done. Each worker uses its own room, so this measures admission,
/// not the join/leave fan-out (that is what `fanout` is for).
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
    let meter = CpuMeter::start(target.pid);
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let url = target.url(&token, &format!("hs-{}-{worker}", target.run));
        let (next, outcomes, data_frames) = (next.clone(), outcomes.clone(), data_frames.clone());
        let protocol = target.protocol;
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < connections {
                let opened = Instant::now();
                let outcome = match connect(&url).await {
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
        report.set(leak(format!("outcome_{outcome}")), *count);
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
    out_of_order: u64,
    latencies: Vec<u64>,
}

/// `fanout`: N members; the first K send M messages each (burst, or paced to `rate`
/// deliveries per second in total). Every member, senders included, must receive every
/// message, each sender's in order.
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
    let url = target.url(&target.token, &format!("fan-{}", target.run));
    let expected = senders as u64 * messages;
    let base = Instant::now();
    let mut sinks = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..members {
        let socket = connect(&url)
            .await
            .map_err(|error| format!("connect: {error}"))?;
        let (sink, stream) = socket.split();
        sinks.push(sink);
        readers.push(tokio::spawn(receive(stream, senders, expected, base)));
    }
    sinks.truncate(senders);

    let meter = CpuMeter::start(target.pid);
    let started = Instant::now();
    // Paced: each sender sends one message every `period`, so that all of them together
    // cause `rate` deliveries per second.
    let period =
        (rate > 0).then(|| Duration::from_secs_f64(members as f64 * senders as f64 / rate as f64));
    let sending: Vec<_> = sinks
        .into_iter()
        .enumerate()
        .map(|(sender, sink)| tokio::spawn(send(sink, sender, messages, period, size, base)))
        .collect();
    // The senders' sinks stay open until every receiver is done.
    let mut open_sinks = Vec::new();
    for task in sending {
        let sink = task.await.map_err(|error| error.to_string())?;
        open_sinks.push(sink.map_err(|error| format!("send: {error}"))?);
    }
    let mut total = Received::default();
    let mut complete_receivers = 0;
    for reader in readers {
        let received = reader.await.map_err(|error| error.to_string())?;
        complete_receivers += u64::from(received.count == expected && received.out_of_order == 0);
        total.count += received.count;
        total.out_of_order += received.out_of_order;
        total.latencies.extend(received.latencies);
    }
    let elapsed = started.elapsed();
    drop(open_sinks);
    let deliveries = total.count;
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
        .set("members", members)
        .set("senders", senders)
        .set("messages_per_sender", messages)
        .set("deliveries", deliveries)
        .set("deliveries_expected", expected * members as u64)
        .set(
            "lost",
            expected * members as u64 - deliveries.min(expected * members as u64),
        )
        .set("out_of_order", total.out_of_order)
        .set("complete_receivers", complete_receivers)
        .set(
            "deliveries_per_sec",
            (deliveries as f64 / elapsed.as_secs_f64()).round(),
        );
    if rate > 0 {
        report.set("target_deliveries_per_sec", rate);
    }
    if let Some(cpu) = meter.per_op_micros(deliveries) {
        report.set("server_cpu_us_per_delivery", (cpu * 100.0).round() / 100.0);
    }
    report.latencies("latency", total.latencies);
    Ok(report)
}

async fn send(
    mut sink: SplitSink<Socket, Message>,
    sender: usize,
    messages: u64,
    period: Option<Duration>,
    size: usize,
    base: Instant,
) -> Result<SplitSink<Socket, Message>, WsError> {
    let mut ticker = period.map(|period| {
        let mut ticker = tokio::time::interval(period);
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

/// Reads until `expected` messages arrived (or the stream ends), checking each sender's order.
async fn receive(
    mut stream: SplitStream<Socket>,
    senders: usize,
    expected: u64,
    base: Instant,
) -> Received {
    let mut received = Received {
        latencies: Vec::with_capacity(expected as usize),
        ..Received::default()
    };
    let mut next_seq = vec![0_u64; senders];
    while received.count < expected {
        // A server that dropped messages never sends the rest: stop after a quiet spell.
        let Ok(Some(Ok(message))) = tokio::time::timeout(QUIET_TIMEOUT, stream.next()).await else {
            break;
        };
        let Message::Text(text) = message else {
            continue;
        };
        if text.starts_with(r#"{"type":"welcome""#) {
            continue; // its history belongs to nobody in this run
        }
        let Some((sender, seq, sent)) = parse_marker(&text) else {
            continue;
        };
        received.count += 1;
        received
            .latencies
            .push(micros_since(base).saturating_sub(sent));
        match next_seq.get_mut(sender) {
            Some(next) if *next == seq => *next += 1,
            _ => received.out_of_order += 1,
        }
    }
    received
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

/// `idle`: opens N authenticated connections (rooms of `room_size`), lets the server settle,
/// and reports how much the server's memory grew per connection. Clients keep reading, so they
/// answer pings and drain join events like real idle clients.
pub async fn idle(
    target: &Target,
    connections: usize,
    room_size: usize,
    settle: Duration,
) -> Result<Report, String> {
    let before = rss_kib(target.pid);
    let mut readers = Vec::with_capacity(connections);
    for index in 0..connections {
        let room = format!("idle-{}-{}", target.run, index / room_size.max(1));
        let socket = connect(&target.url(&target.token, &room))
            .await
            .map_err(|error| format!("connect #{index}: {error}"))?;
        readers.push(tokio::spawn(async move {
            let mut socket = socket;
            while let Some(Ok(_)) = socket.next().await {}
        }));
    }
    tokio::time::sleep(settle).await;
    let after = rss_kib(target.pid);
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

/// Report keys are `&'static str`; the handful of outcome names per run is fine to leak.
fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
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
}
