//! Serves the dashboard over a simulated fleet without a cluster, for
//! looking at the pages (and screenshots): `cargo run --example preview
//! -- 127.0.0.1:8300 [follower]`, then log in as kim / admin-pass-1! or
//! lee / audit-pass-2!.

#[path = "../tests/fixture/mod.rs"]
mod fixture;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8300".into());
    let role = match args.next().as_deref() {
        Some("follower") => dashboard::ports::Role::Backup,
        _ => dashboard::ports::Role::Primary,
    };
    let fixture = fixture::Fixture::new(8, 1_500, 40, role);
    let (bound, _stop) = fixture.serve(&address).await;
    println!("dashboard preview on http://{bound}/ (Ctrl-C stops)");
    let _ = tokio::signal::ctrl_c().await;
}
