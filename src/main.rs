//! The `ordersvc` binary: parse the command line, dispatch to the subcommand, report errors.

use clap::{Parser, Subcommand};
use color_eyre::eyre::Result;
use tracing::Level;

use ordersvc_client::{bench, publish, replay};
use ordersvc_service::config::LogFormat;
use ordersvc_service::{erase, logging, migrate, reprocess, serve};

/// Orders from NATS JetStream, stored in PostgreSQL, served over HTTP from memory.
#[derive(Parser, Debug)]
#[command(name = "ordersvc", version, about, propagate_version = true)]
struct Cli {
    /// Log line format. The level comes from RUST_LOG (default: info for serve, migrate and
    /// erase, whose lines are its audit trail; warn for the other commands).
    #[arg(
        long,
        global = true,
        env = "ORDERSVC_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Consume orders from JetStream, store them in PostgreSQL and serve them over HTTP.
    // Boxed: its settings are far larger than any other command's.
    Serve(Box<serve::ServeArgs>),
    /// Publish messages to the stream: files, stdin, or the embedded samples.
    Publish(publish::PublishArgs),
    /// Create the database if needed and apply the embedded migrations.
    Migrate(migrate::MigrateArgs),
    /// Republish every stored order from PostgreSQL to the stream (or re-validate with --dry-run).
    ReplayFromDb(replay::ReplayArgs),
    /// Measure the service: HTTP read load (`bench http`) or ingest throughput (`bench ingest`).
    Bench(bench::BenchArgs),
    /// Erase orders' personal data from PostgreSQL, both streams and every replica's memory;
    /// a tombstone keeps each from ever being stored again.
    Erase(erase::EraseArgs),
    /// Work on the rejected messages: `rejected reprocess` sends them through today's rules.
    Rejected(reprocess::RejectedArgs),
}

impl Command {
    /// The log level without `RUST_LOG`: the service says what it does; a client command run by
    /// hand prints its own results, and the NATS client's connection chatter would bury them.
    fn default_log_level(&self) -> Level {
        match self {
            // Erasure's log lines are its audit trail (ids and reason, never personal data).
            Command::Serve(_) | Command::Migrate(_) | Command::Erase(_) => Level::INFO,
            Command::Publish(_)
            | Command::ReplayFromDb(_)
            | Command::Bench(_)
            | Command::Rejected(_) => Level::WARN,
        }
    }
}

fn main() -> Result<()> {
    logging::install_error_reports()?;
    let cli = Cli::parse();
    logging::init(cli.log_format, cli.command.default_log_level());
    match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Publish(args) => publish::run(args),
        Command::Migrate(args) => migrate::run(args),
        Command::ReplayFromDb(args) => replay::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Erase(args) => erase::run(args),
        Command::Rejected(args) => reprocess::run(args),
    }
}
