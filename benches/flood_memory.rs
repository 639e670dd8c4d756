//! Memory under a flood (issue: "hold up under abuse"): 10,000 messages into a room where one
//! member never reads. Runs the release `wschat` binary as its own process and reports its RSS
//! before and after, plus its peak, while checking that every reading member got every message
//! in order. Run with `cargo bench --bench flood_memory`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use wschat_testkit::{ClientBuilder, ServerEvent};

const MESSAGES: usize = 10_000;
const TEXT_BYTES: usize = 1024;
const TOKEN: &str = "bench-token";

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let mut server = Command::new(env!("CARGO_BIN_EXE_wschat"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--token",
            TOKEN,
            "--rate-limit",
            "0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start wschat");
    let pid = server.id().expect("pid");
    let mut lines = BufReader::new(server.stdout.take().expect("stdout")).lines();
    let line = lines
        .next_line()
        .await
        .expect("stdout")
        .expect("listening line");
    let addr = line
        .trim_start_matches("wschat listening on ws://")
        .parse()
        .expect("address");
    let client = |name: &str| {
        ClientBuilder::new(addr)
            .token(TOKEN)
            .name(name)
            .timeout(Duration::from_secs(60))
    };

    let _stalled = client("stalled").connect_ok().await;
    let mut readers = Vec::new();
    for index in 0..2 {
        readers.push(client(&format!("reader{index}")).connect_ok().await);
    }
    let mut sender = client("sender").connect_ok().await;
    let before = rss_kib(pid, "VmRSS:");

    let started = Instant::now();
    let text = "z".repeat(TEXT_BYTES);
    let reading: Vec<_> = readers
        .into_iter()
        .map(|mut reader| {
            tokio::spawn(async move {
                let mut next = 0;
                while next < MESSAGES {
                    if let ServerEvent::Message(message) = reader.recv().await {
                        let number: usize =
                            message.text.split(' ').next().unwrap().parse().unwrap();
                        assert_eq!(number, next, "in order, none missing");
                        next += 1;
                    }
                }
                next
            })
        })
        .collect();
    for n in 0..MESSAGES {
        sender.send_text(&format!("{n} {text}")).await;
        sender.recv_message().await;
    }
    for task in reading {
        assert_eq!(task.await.expect("reader"), MESSAGES);
    }
    let elapsed = started.elapsed();
    let after = rss_kib(pid, "VmRSS:");
    let peak = rss_kib(pid, "VmHWM:");
    println!("flood: {MESSAGES} messages of {TEXT_BYTES} B, 1 stalled member, 2 readers + sender");
    println!("  all delivered in order to every reader in {elapsed:.2?}");
    println!("  server RSS before {before} KiB, after {after} KiB, peak {peak} KiB");
    println!(
        "  growth {} KiB for {} KiB of traffic",
        after.saturating_sub(before),
        MESSAGES * TEXT_BYTES / 1024
    );
}
