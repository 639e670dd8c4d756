//! The `wschat` binary: parse the configuration, start the server, wait for a signal, exit.

use std::io::{self, ErrorKind, IsTerminal};
use std::process::ExitCode;

use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use wschat::config::default_listeners;
use wschat::config::{Command, UsersCommand};
use wschat::identity::users;
use wschat::log_format::TextFormat;
use wschat::{logs, Cli, Config, LogFormat, Server, StartError};

/// Exit code for configuration the server refuses (SPEC §2).
const EXIT_BAD_CONFIG: u8 = 2;
/// Exit code for failures at run time, such as a port already in use.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let cli = match Cli::try_parse_args() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help and --version: clap prints them in full.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let message = error.to_string();
            let first_line = message
                .lines()
                .find(|line| !line.trim().is_empty())
                .unwrap_or("");
            eprintln!("wschat: {}", first_line.trim_start_matches("error: "));
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if let Some(Command::Users(command)) = cli.command {
        return edit_users_file(command);
    }
    let log_format = cli.log_format;
    let config = match cli.into_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("wschat: {error}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    init_logging(log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(logs::flush)
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("wschat: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    // The server runs as a task on the worker threads rather than on this thread inside
    // `block_on`: an accept loop on the main thread would hand every new connection to a
    // worker with a cross-thread wake-up, which costs more than the handshake itself.
    let served = runtime.block_on(async { tokio::spawn(serve(config)).await });
    logs::flush();
    match served {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) if matches!(error.downcast_ref(), Some(StartError::Config(_))) => {
            // A users file or JWT key that does not load is bad configuration too.
            eprintln!("wschat: {error}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
        Ok(Err(error)) => {
            eprintln!("wschat: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
        Err(error) => {
            eprintln!("wschat: the server task failed: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `wschat users add|remove`: edits the users file and exits. The new token is printed once,
/// on stdout, and nowhere else.
fn edit_users_file(command: UsersCommand) -> ExitCode {
    let edited = match &command {
        UsersCommand::Add { name, file } => users::add_user(file, name).map(|token| {
            println!("{token}");
            eprintln!(
                "wschat: added {name} to {}; the token above is shown only now",
                file.display()
            );
        }),
        UsersCommand::Remove { name, file } => users::remove_user(file, name).map(|()| {
            eprintln!("wschat: removed {name} from {}", file.display());
        }),
    };
    match edited {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wschat: {error}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    if config.token.is_none() && !config.has_per_user_source() {
        tracing::warn!(
            "no token configured: using the development token; set --token or --token-file"
        );
    }
    let listeners = bind_listeners(&config).await?;
    let server = Server::from_listeners(listeners, config)?;
    for addr in server.local_addrs() {
        println!("wschat listening on ws://{addr}");
    }
    server.run(shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Binds every address. On the default pair, a host without IPv6 loopback keeps IPv4 only;
/// an address asked for explicitly must bind.
async fn bind_listeners(config: &Config) -> anyhow::Result<Vec<TcpListener>> {
    let defaults = config.listen == default_listeners();
    let mut listeners = Vec::new();
    for &addr in &config.listen {
        match TcpListener::bind(addr).await {
            Ok(listener) => listeners.push(listener),
            Err(error) if defaults && addr.is_ipv6() && is_unavailable(&error) => {
                tracing::warn!(%addr, %error, "IPv6 loopback unavailable; listening on IPv4 only");
            }
            Err(error) => anyhow::bail!("cannot listen on {addr}: {error}"),
        }
    }
    Ok(listeners)
}

fn is_unavailable(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::AddrNotAvailable | ErrorKind::Unsupported
    ) || error.raw_os_error() == Some(97) // EAFNOSUPPORT on Linux
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(io::stderr().is_terminal())
        .with_writer(logs::BatchedStderr);
    logs::flush_before_panic_messages();
    match format {
        LogFormat::Text => builder.event_format(TextFormat).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
