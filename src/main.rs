//! The `ordersvc` binary: parse the command line, dispatch to the subcommand, report errors.

use clap::{Parser, Subcommand};
use color_eyre::eyre::Result;

use ordersvc::config::LogFormat;
use ordersvc::{logging, migrate, publish, serve};

/// Orders from NATS JetStream, stored in PostgreSQL, served over HTTP from memory.
#[derive(Parser, Debug)]
#[command(name = "ordersvc", version, about, propagate_version = true)]
struct Cli {
    /// Log line format.
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
    Serve(serve::ServeArgs),
    /// Publish messages to the stream: files, stdin, or the embedded samples.
    Publish(publish::PublishArgs),
    /// Create the database if needed and apply the embedded migrations.
    Migrate(migrate::MigrateArgs),
}

fn main() -> Result<()> {
    color_eyre::install()?;
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Publish(args) => publish::run(args),
        Command::Migrate(args) => migrate::run(args),
    }
}
