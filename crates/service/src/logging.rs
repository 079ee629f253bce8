//! Log output and error reports, both on stderr. Logs are text or JSON lines, filtered by
//! `RUST_LOG`, else by the command's default level (`info` for the service, `warn` for the
//! client commands); an error that ends a command is reported once, as a chain of contexts.

use std::io::IsTerminal;

use tracing::Level;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the one place that reports errors (what `main` returns): the chain of contexts, in
/// colour only for a person at a terminal, without color-eyre's advice on backtraces (the
/// report is for an operator; RUST_BACKTRACE=1 still adds one). Call once, first thing.
pub fn install_error_reports() -> color_eyre::eyre::Result<()> {
    let mut hook = color_eyre::config::HookBuilder::default().display_env_section(false);
    if !std::io::stderr().is_terminal() {
        hook = hook.theme(color_eyre::config::Theme::new());
    }
    hook.install()
}

/// Installs the global subscriber; call once, right after the command line is parsed. `default` is the level when
/// `RUST_LOG` is not set.
pub fn init(format: LogFormat, default: Level) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in files or collectors.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The filter without `RUST_LOG`. sqlx logs every slow statement at info; that is noise for an
/// ingest that batches on purpose, so sqlx says at most warnings.
fn default_filter(level: Level) -> EnvFilter {
    // In tracing, the more verbose level is the greater one.
    let sqlx = level.min(Level::WARN);
    EnvFilter::new(format!("{level},sqlx={sqlx}"))
}
