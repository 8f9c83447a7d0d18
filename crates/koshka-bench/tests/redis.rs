//! The social workloads against the real Redis (skipped when `redis-server` is missing):
//! preload, run every operation kind, and expect no error replies.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use koshka_bench::BenchArgs;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

/// A redis-server on a free loopback port, without persistence, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> anyhow::Result<Option<Redis>> {
        let program = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let port = koshka_client::testkit::free_port()?;
        let child = match Command::new(&program)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Some(redis))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn args(port: u16, extra: &[&str]) -> BenchArgs {
    let server = format!("127.0.0.1:{port}");
    let mut argv = vec![
        "bench",
        "--protocol",
        "redis",
        "--server",
        &server,
        "--duration",
        "0.5",
        "--warmup",
        "0.1",
        "--connections",
        "4",
        "--pipeline",
        "2",
        "--distribution",
        "zipf",
        "--preload",
    ];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv) {
        Ok(cli) => cli.bench,
        Err(error) => panic!("bad arguments: {error}"),
    }
}

#[test]
fn messages_and_friends_run_cleanly_against_redis() -> anyhow::Result<()> {
    let Some(redis) = Redis::start()? else {
        eprintln!("redis-server not installed: skipped");
        return Ok(());
    };
    let messages = [
        "--workload",
        "messages",
        "--users",
        "500",
        "--messages",
        "3000",
        "--big-mailbox",
        "200",
        "--redis-model",
        "indexed",
        "--mix",
        "send=1,dialogs=1,conversation=1,read=1,search=1,bigsearch=1,unread=1",
    ];
    let report = koshka_bench::run(args(redis.port, &messages))?;
    assert!(report.server_version.starts_with("redis "), "{report}");
    assert_eq!(report.errors, 0, "{report}");
    let social = report
        .social
        .as_ref()
        .map(|social| social.ops_by_kind.len());
    assert_eq!(social, Some(7), "{report}");

    // The plain model (no search), recipients uniform, whole Russian texts.
    let plain = [
        "--workload",
        "messages",
        "--users",
        "500",
        "--messages",
        "3000",
        "--big-mailbox",
        "0",
        "--dialog-peers",
        "0",
        "--texts",
        "ru",
        "--text-size",
        "300",
        "--redis-model",
        "plain",
    ];
    let report = koshka_bench::run(args(redis.port, &plain))?;
    assert_eq!(report.errors, 0, "{report}");
    let social = report
        .social
        .as_ref()
        .map(|social| social.ops_by_kind.len());
    assert_eq!(social, Some(4), "{report}");

    let friends = [
        "--workload",
        "friends",
        "--users",
        "3000",
        "--edges",
        "20000",
        "--big-pairs",
        "2",
        "--big-degree",
        "300",
        "--privacy-users",
        "50",
        "--mix",
        "page=1,common=1,common1k=1,add=1,remove=1,privacy=1",
    ];
    let report = koshka_bench::run(args(redis.port, &friends))?;
    assert_eq!(report.errors, 0, "{report}");
    let social = report
        .social
        .as_ref()
        .map(|social| social.ops_by_kind.len());
    assert_eq!(social, Some(6), "{report}");
    assert!(report.ops > 50, "{report}");
    Ok(())
}
