//! `wschat-load`: a load generator for wschat (and for any server that broadcasts text frames),
//! usable against any deployment.
//!
//! Scenarios: `handshake` (open, complete, close), `reject` (a bad token: how the server turns
//! clients away, and that none of them ever gets a data frame), `fanout` (N members of one
//! room, K senders, M messages each, burst or paced: deliveries/s, latency from a timestamp
//! inside the text, completeness and per-sender order at every receiver) and `idle` (N idle
//! authenticated connections: server memory per connection). Given the server's PID it also
//! reports the server's CPU time per operation, read from `/proc`.
//!
//! A cluster (SPEC §11) is driven by giving `--url` once per node: clients are spread over the
//! nodes round-robin (client `i` on node `i mod nodes`, so `fanout`'s senders too), server
//! figures are summed over every `--server-pid`, and `--redis-pid` adds Redis's CPU time per
//! posted message. `fanout` then also reports the latency of deliveries on another node than
//! the sender's, and checks that every receiver saw one and the same order (message ids one
//! apart everywhere).
//!
//! `--protocol wschat` speaks SPEC §5 (JSON events, `welcome` first); `--protocol raw` treats
//! every text frame as a broadcast message, for the comparison peers. `--carrier` says where
//! the token goes (SPEC §10): the `token` query parameter, `Authorization: Bearer`, or
//! `Sec-WebSocket-Protocol: wschat, bearer.<token>`.
//!
//! Two subcommands are not scenarios, both for the identity benchmarks (`benches/identity.sh`):
//! `mint-jwt` prints a signed token (HS256 or EdDSA), optionally making the key first, and
//! `auth-cost` times the server's own token check for one source, without the network.

mod auth_cost;
mod mint;
mod procfs;
mod scenarios;
mod stats;

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "wschat-load", version, about = "Load generator for wschat")]
struct Cli {
    /// WebSocket URL of the server, without query; repeat it for each node of a cluster
    /// (clients are spread over the nodes round-robin)
    #[arg(
        long = "url",
        value_name = "URL",
        default_value = "ws://127.0.0.1:3000/"
    )]
    urls: Vec<String>,
    /// Token every client presents (the shared secret, a users-file token or a JWT), in the
    /// place `--carrier` says
    #[arg(
        long,
        env = "WSCHAT_TOKEN",
        hide_env_values = true,
        default_value = "mysecrettoken123"
    )]
    token: String,
    /// Where the token goes
    #[arg(long, value_enum, default_value_t = Carrier::Query)]
    carrier: Carrier,
    #[arg(long, value_enum, default_value_t = Protocol::Wschat)]
    protocol: Protocol,
    /// PID of the server process, to report its CPU time per operation and its memory; repeat
    /// it for each node of a cluster (figures are summed over the nodes)
    #[arg(long = "server-pid", value_name = "PID")]
    server_pids: Vec<u32>,
    /// PID of the cluster's redis-server, to report its CPU time per posted message (`fanout`)
    #[arg(long, value_name = "PID")]
    redis_pid: Option<u32>,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
    /// Give up on a scenario after this long
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    deadline: Duration,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// wschat's JSON events; the first frame of a connection is `welcome`
    Wschat,
    /// every text frame is a message; nothing is sent on connect
    Raw,
}

/// Where a client puts its token (SPEC §4, §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Carrier {
    /// The `token` query parameter
    Query,
    /// `Authorization: Bearer <token>`
    Header,
    /// `Sec-WebSocket-Protocol: wschat, bearer.<token>`, as a browser sends it
    Subprotocol,
}

impl Carrier {
    pub fn name(self) -> &'static str {
        match self {
            Carrier::Query => "query",
            Carrier::Header => "header",
            Carrier::Subprotocol => "subprotocol",
        }
    }
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Open a WebSocket, complete the handshake, close it; repeat
    Handshake {
        #[arg(long, default_value_t = 2000)]
        connections: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: u64,
    },
    /// Like handshake, with a wrong token
    Reject {
        #[arg(long, default_value_t = 2000)]
        connections: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: u64,
    },
    /// N members in one room, K of them sending M messages each; members (senders first) are
    /// spread over the nodes round-robin
    Fanout {
        #[arg(long, default_value_t = 100)]
        members: usize,
        #[arg(long, default_value_t = 1)]
        senders: usize,
        #[arg(long, default_value_t = 1000)]
        messages: u64,
        /// Pace the senders to this many deliveries per second in total (0: burst); messages
        /// per second are this divided by --members
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Bytes of text per message (at least the timestamp marker)
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Hold N authenticated connections open and idle
    Idle {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Members per room
        #[arg(long, default_value_t = 100)]
        room_size: usize,
        /// Time to let the server settle before measuring
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        settle: Duration,
    },
    /// Not a scenario: print a signed token (JWT) for the identity benchmarks, valid for
    /// `--ttl`; with `--new-key`, write a fresh key first
    MintJwt(mint::MintArgs),
    /// Not a scenario: time the server's token check (`Authenticator::authenticate`) for one
    /// source, in process, without the network
    AuthCost(auth_cost::AuthCostArgs),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Scenario::MintJwt(args) = &cli.scenario {
        match mint::run(args) {
            Ok(token) => println!("{token}"),
            Err(error) => {
                eprintln!("wschat-load mint-jwt: {error}");
                std::process::exit(1);
            }
        }
        return;
    }
    if let Scenario::AuthCost(args) = &cli.scenario {
        match auth_cost::run(args) {
            Ok(report) => println!("{report}"),
            Err(error) => {
                eprintln!("wschat-load auth-cost: {error}");
                std::process::exit(1);
            }
        }
        return;
    }
    let target = scenarios::Target {
        urls: cli.urls,
        token: cli.token,
        carrier: cli.carrier,
        protocol: cli.protocol,
        server_pids: cli.server_pids,
        redis_pid: cli.redis_pid,
        run: format!("{:08x}", rand::random::<u32>()),
    };
    let work = async {
        match cli.scenario {
            Scenario::Handshake {
                connections,
                concurrency,
            } => scenarios::handshake(&target, connections, concurrency, true).await,
            Scenario::Reject {
                connections,
                concurrency,
            } => scenarios::handshake(&target, connections, concurrency, false).await,
            Scenario::Fanout {
                members,
                senders,
                messages,
                rate,
                size,
            } => scenarios::fanout(&target, members, senders, messages, rate, size).await,
            Scenario::Idle {
                connections,
                room_size,
                settle,
            } => scenarios::idle(&target, connections, room_size, settle).await,
            Scenario::MintJwt(_) | Scenario::AuthCost(_) => {
                unreachable!("handled before the runtime work")
            }
        }
    };
    match tokio::time::timeout(cli.deadline, work).await {
        Ok(Ok(report)) => report.print(cli.json),
        Ok(Err(error)) => {
            eprintln!("wschat-load: {error}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!(
                "wschat-load: scenario did not finish within {:?}",
                cli.deadline
            );
            std::process::exit(1);
        }
    }
}
