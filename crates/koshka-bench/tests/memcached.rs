//! The bench against the real memcached: the counts must add up.

use clap::Parser;
use koshka_bench::{BenchArgs, Distribution};
use koshka_client::testkit::ServerProcess;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn args(server: &str, extra: &[&str]) -> BenchArgs {
    let mut argv = vec![
        "bench",
        "--server",
        server,
        "--duration",
        "0.5",
        "--warmup",
        "0.1",
    ];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv) {
        Ok(cli) => cli.bench,
        Err(error) => panic!("bad arguments: {error}"),
    }
}

#[test]
fn preloaded_multiget_hits_everything() -> anyhow::Result<()> {
    let server = ServerProcess::memcached()?;
    let extra = [
        "--connections",
        "4",
        "--pipeline",
        "8",
        "--keys",
        "2000",
        "--multiget",
        "5",
    ];
    let mut bench_args = args(&server.addr(), &extra);
    bench_args.preload = true;
    bench_args.get_ratio = 0.8;
    let report = koshka_bench::run(bench_args)?;
    assert!(report.ops > 100, "{report}");
    assert_eq!(report.ops, report.gets + report.sets);
    assert_eq!(report.get_hits, report.gets * 5, "{report}");
    assert_eq!(report.get_misses, 0);
    assert_eq!(report.errors, 0);
    assert!(report.latency_us.p50 > 0.0 && report.latency_us.p50 <= report.latency_us.max);
    assert!(report.preload_s.is_some());
    assert!(report.server_version.starts_with("1."));
    let json = serde_json::to_value(&report)?;
    assert!(json["latency_us"]["p999"].is_number());
    Ok(())
}

#[test]
fn empty_server_misses_and_zipf_runs() -> anyhow::Result<()> {
    let server = ServerProcess::memcached()?;
    let extra = [
        "--connections",
        "2",
        "--get-ratio",
        "1",
        "--distribution",
        "zipf",
    ];
    let bench_args = args(&server.addr(), &extra);
    assert_eq!(bench_args.distribution, Distribution::Zipf);
    let report = koshka_bench::run(bench_args)?;
    assert!(report.gets > 0);
    assert_eq!(report.sets, 0);
    assert_eq!(report.get_hits, 0);
    assert_eq!(report.get_misses, report.gets);
    Ok(())
}

#[test]
fn unreachable_server_is_an_error() -> anyhow::Result<()> {
    let port = koshka_client::testkit::free_port()?;
    let result = koshka_bench::run(args(&format!("127.0.0.1:{port}"), &[]));
    assert!(result.is_err());
    Ok(())
}
