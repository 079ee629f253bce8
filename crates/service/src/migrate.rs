//! `ordersvc migrate`: creates the database if needed and applies the embedded migrations.

use clap::Args;
use color_eyre::eyre::{Result, WrapErr};

use crate::config::{redact_url, DbArgs};
use crate::store::Store;

/// Settings of `ordersvc migrate`.
#[derive(Args, Clone, Debug)]
pub struct MigrateArgs {
    /// Where PostgreSQL is.
    #[command(flatten)]
    pub(crate) db: DbArgs,
}

/// Runs the migrations and says so.
pub fn run(args: MigrateArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .wrap_err("cannot start the async runtime")?;
    runtime.block_on(async {
        let store = Store::open(&args.db.database_url).await?;
        store.close().await;
        Ok::<_, color_eyre::Report>(())
    })?;
    println!(
        "database {} is migrated and ready",
        redact_url(&args.db.database_url)
    );
    Ok(())
}
