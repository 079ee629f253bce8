// `sqlx::migrate!` embeds the migrations at compile time, but cargo does not know it reads them:
// without this, a new migration file is missed by an incremental build (sqlx's documented fix).
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
