//! The benchmark report: throughput, hit ratio, latency percentiles, machine and commit.

use std::fmt;

use hdrhistogram::Histogram;

use crate::kv::Counters;
use crate::social::SocialCounters;
use crate::{BenchArgs, Distribution, Protocol, Workload};

impl Latency {
    fn from_histogram(histogram: &Histogram<u64>) -> Latency {
        let micros = |nanos: u64| nanos as f64 / 1000.0;
        Latency {
            p50: micros(histogram.value_at_quantile(0.50)),
            p99: micros(histogram.value_at_quantile(0.99)),
            p999: micros(histogram.value_at_quantile(0.999)),
            max: micros(histogram.max()),
            mean: histogram.mean() / 1000.0,
        }
    }
}

/// One operation kind of a social workload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpReport {
    /// Kind name (`send`, `search`, `privacy`, …).
    pub name: String,
    /// Completed operations in the measured window.
    pub ops: u64,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Operations with an error reply.
    pub errors: u64,
    /// Latency of the whole logical operation (all its round trips).
    pub latency_us: Latency,
}

/// What a social workload loaded and ran.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SocialReport {
    /// User ids 1..=users.
    pub users: u64,
    /// What the data items are: `messages` or `edges`.
    pub data_kind: String,
    /// Messages sent or distinct friendships written by the preload phase.
    pub data_items: u64,
    /// The operation mix.
    pub mix: String,
    /// Data set details (text source, degrees).
    pub detail: String,
    /// Preload items written (data items plus auxiliary ones), if preloaded.
    pub preload_items: Option<u64>,
    /// Per-operation results.
    pub ops_by_kind: Vec<OpReport>,
    /// The server's CPU seconds (user + system) over the measured window, with
    /// `--server-pid`.
    pub server_cpu_s: Option<f64>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// The machine the client ran on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    /// Logical CPUs available to the process.
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
}

impl Machine {
    /// Detects the current machine.
    pub fn detect() -> Machine {
        let nproc = std::thread::available_parallelism().map_or(1, usize::from);
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|line| line.starts_with("model name"))
                    .and_then(|line| line.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Machine { nproc, cpu_model }
    }
}

/// The git commit of the working directory (`$KOSHKA_GIT_COMMIT` overrides), or `unknown`.
fn git_commit() -> String {
    if let Ok(commit) = std::env::var("KOSHKA_GIT_COMMIT") {
        return commit;
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|commit| commit.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Everything one run measured, and under which settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Workload run.
    pub workload: Workload,
    /// Protocol spoken.
    pub protocol: Protocol,
    /// Server address.
    pub server: String,
    /// The server's `version` reply.
    pub server_version: String,
    /// Connections.
    pub connections: usize,
    /// Pipeline depth.
    pub pipeline: usize,
    /// Keys per get.
    pub multiget: usize,
    /// Key space size.
    pub keys: u64,
    /// Key length.
    pub key_size: usize,
    /// Value length.
    pub value_size: usize,
    /// Fraction of gets.
    pub get_ratio: f64,
    /// Key distribution.
    pub distribution: Distribution,
    /// Client worker threads.
    pub threads: usize,
    /// Measured seconds.
    pub duration_s: f64,
    /// Warm-up seconds.
    pub warmup_s: f64,
    /// Seconds spent preloading, if `--preload`.
    pub preload_s: Option<f64>,
    /// Requests answered in the measured window (a multi-get is one request).
    pub ops: u64,
    /// Requests per second.
    pub ops_per_sec: f64,
    /// Keys per second (get keys + sets).
    pub keys_per_sec: f64,
    /// Get requests.
    pub gets: u64,
    /// Set requests.
    pub sets: u64,
    /// Keys found by gets.
    pub get_hits: u64,
    /// Keys missed by gets.
    pub get_misses: u64,
    /// Error or unexpected replies.
    pub errors: u64,
    /// Request latency.
    pub latency_us: Latency,
    /// The client machine.
    pub machine: Machine,
    /// The commit the bench was built from (working directory's HEAD).
    pub git_commit: String,
    /// Social workloads: data set and per-operation results.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub social: Option<SocialReport>,
}

impl Report {
    pub(crate) fn new(
        args: &BenchArgs,
        threads: usize,
        server_version: String,
        preload_s: Option<f64>,
        counters: &Counters,
    ) -> Report {
        let histogram = &counters.latency_ns;
        let ops = counters.gets + counters.sets;
        Report {
            workload: args.workload,
            protocol: args.protocol,
            server: args.server.clone(),
            server_version,
            connections: args.connections,
            pipeline: args.pipeline,
            multiget: args.multiget,
            keys: args.keys,
            key_size: args.key_size,
            value_size: args.value_size,
            get_ratio: args.get_ratio,
            distribution: args.distribution,
            threads,
            duration_s: args.duration,
            warmup_s: args.warmup,
            preload_s,
            ops,
            ops_per_sec: ops as f64 / args.duration,
            keys_per_sec: (counters.get_keys + counters.sets) as f64 / args.duration,
            gets: counters.gets,
            sets: counters.sets,
            get_hits: counters.hits,
            get_misses: counters.get_keys - counters.hits.min(counters.get_keys),
            errors: counters.errors,
            latency_us: Latency::from_histogram(histogram),
            machine: Machine::detect(),
            git_commit: git_commit(),
            social: None,
        }
    }

    /// The report of a social workload (`ops` counts logical operations).
    pub(crate) fn social(
        args: &BenchArgs,
        threads: usize,
        server_version: String,
        preload_s: Option<f64>,
        counters: &SocialCounters,
        kinds: &[&str],
        mut social: SocialReport,
    ) -> Report {
        let duration = if args.preload_only {
            0.0
        } else {
            args.duration
        };
        let per_sec = |ops: u64| {
            if duration > 0.0 {
                ops as f64 / duration
            } else {
                0.0
            }
        };
        social.ops_by_kind = kinds
            .iter()
            .zip(&counters.kinds)
            .filter(|(_, kind)| kind.ops > 0)
            .map(|(name, kind)| OpReport {
                name: (*name).to_owned(),
                ops: kind.ops,
                ops_per_sec: per_sec(kind.ops),
                errors: kind.errors,
                latency_us: Latency::from_histogram(&kind.latency_ns),
            })
            .collect();
        let ops = counters.total.ops;
        Report {
            workload: args.workload,
            protocol: args.protocol,
            server: args.server.clone(),
            server_version,
            connections: args.connections,
            pipeline: args.pipeline,
            multiget: 1,
            keys: args.users,
            key_size: 0,
            value_size: if args.workload == Workload::Messages {
                args.text_size
            } else {
                0
            },
            get_ratio: 0.0,
            distribution: args.distribution,
            threads,
            duration_s: duration,
            warmup_s: args.warmup,
            preload_s,
            ops,
            ops_per_sec: per_sec(ops),
            keys_per_sec: per_sec(ops),
            gets: 0,
            sets: 0,
            get_hits: 0,
            get_misses: 0,
            errors: counters.total.errors,
            latency_us: Latency::from_histogram(&counters.total.latency_ns),
            machine: Machine::detect(),
            git_commit: git_commit(),
            social: Some(social),
        }
    }
}

impl Report {
    fn fmt_social(&self, f: &mut fmt::Formatter<'_>, social: &SocialReport) -> fmt::Result {
        writeln!(
            f,
            "koshka bench: {:?} over {:?} against {} ({})",
            self.workload, self.protocol, self.server, self.server_version
        )?;
        writeln!(
            f,
            "  {} users, {} {}; {}",
            social.users, social.data_items, social.data_kind, social.detail
        )?;
        writeln!(
            f,
            "  {} connections x pipeline {}, {} threads, mix {}",
            self.connections, self.pipeline, self.threads, social.mix
        )?;
        if let (Some(preload_s), Some(items)) = (self.preload_s, social.preload_items) {
            writeln!(
                f,
                "  preload: {items} items in {preload_s:.2} s ({:.0}/s)",
                items as f64 / preload_s.max(1e-9)
            )?;
        }
        if self.duration_s > 0.0 {
            writeln!(
                f,
                "  duration {:.1} s (after {:.1} s warm-up)",
                self.duration_s, self.warmup_s
            )?;
            writeln!(
                f,
                "  ops/s:     {:.0}  ({} logical operations, {} errors)",
                self.ops_per_sec, self.ops, self.errors
            )?;
            if let Some(cpu_s) = social.server_cpu_s {
                writeln!(
                    f,
                    "  server CPU: {cpu_s:.2} s ({:.0} ops per CPU-second)",
                    self.ops as f64 / cpu_s.max(1e-9)
                )?;
            }
            let latency = &self.latency_us;
            writeln!(
                f,
                "  latency us: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}",
                latency.p50, latency.p99, latency.p999, latency.max, latency.mean
            )?;
            for op in &social.ops_by_kind {
                writeln!(
                    f,
                    "    {:<13} {:>9.0} ops/s  p50 {:>8.1}  p99 {:>8.1}  p99.9 {:>8.1} us  errors {}",
                    op.name,
                    op.ops_per_sec,
                    op.latency_us.p50,
                    op.latency_us.p99,
                    op.latency_us.p999,
                    op.errors
                )?;
            }
        }
        writeln!(
            f,
            "  machine: {} x {}; commit {}",
            self.machine.nproc, self.machine.cpu_model, self.git_commit
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(social) = &self.social {
            return self.fmt_social(f, social);
        }
        writeln!(
            f,
            "koshka bench: {:?} over {:?} against {} ({})",
            self.workload, self.protocol, self.server, self.server_version
        )?;
        writeln!(
            f,
            "  {} connections x pipeline {}, {} keys ({} B keys, {} B values, {:?}), \
             get ratio {}, multiget {}, {} threads",
            self.connections,
            self.pipeline,
            self.keys,
            self.key_size,
            self.value_size,
            self.distribution,
            self.get_ratio,
            self.multiget,
            self.threads
        )?;
        if let Some(preload_s) = self.preload_s {
            writeln!(f, "  preload: {preload_s:.2} s")?;
        }
        writeln!(
            f,
            "  duration {:.1} s (after {:.1} s warm-up)",
            self.duration_s, self.warmup_s
        )?;
        writeln!(
            f,
            "  ops/s:     {:.0}  (keys/s {:.0}; {} ops)",
            self.ops_per_sec, self.keys_per_sec, self.ops
        )?;
        writeln!(
            f,
            "  gets {} (hits {}, misses {}), sets {}, errors {}",
            self.gets, self.get_hits, self.get_misses, self.sets, self.errors
        )?;
        let latency = &self.latency_us;
        writeln!(
            f,
            "  latency us: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}",
            latency.p50, latency.p99, latency.p999, latency.max, latency.mean
        )?;
        writeln!(
            f,
            "  machine: {} x {}; commit {}",
            self.machine.nproc, self.machine.cpu_model, self.git_commit
        )
    }
}
