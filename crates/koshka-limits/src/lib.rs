//! Named limits for every koshka component, and the relations between them.
//!
//! # Layout
//! * hard ceilings are `const`s: nothing configured may exceed them;
//! * [`Limits`] holds the tunables, built by [`Limits::production`] or [`Limits::test_min`] and
//!   validated against the ceilings by [`Limits::validate`].
//!
//! This crate is not configuration parsing: the server maps its TOML onto [`Limits`].

/// Longest plain memcached key, in bytes. memcached's own limit; clients rely on it.
/// A longer key gets `CLIENT_ERROR bad command line format`.
pub const KEY_LEN_MAX: usize = 250;

/// Longest compiled key (messages, friends, …), in bytes. Compiled keys carry id lists and
/// search text, so they may be longer than plain keys. A longer key is refused with
/// `CLIENT_ERROR bad command line format` (as memcached answers for a long plain key).
pub const COMPILED_KEY_LEN_MAX: usize = 8 * 1024;

/// Default largest value, in bytes (1 MiB, memcached's default item size).
pub const VALUE_SIZE_DEFAULT: usize = 1024 * 1024;

/// Ceiling for the configurable value size (64 MiB). A bigger value would make one binlog
/// record exceed [`BINLOG_RECORD_SIZE_MAX`].
pub const VALUE_SIZE_MAX: usize = 64 * 1024 * 1024;

/// Longest command line (everything before `\r\n`), in bytes. Only a multi-get comes near it:
/// memcached sets no limit and its own tests send a 187 KB `get` of 18 725 keys, so this is a
/// value's worth (a connection buffers at most one line or one value either way). A longer
/// line gets `CLIENT_ERROR line too long` and the connection is closed, because the stream
/// cannot be re-synchronised.
pub const LINE_LEN_MAX: usize = 1024 * 1024;

/// Most bytes of a command line other than a retrieval (`get`, `gets`, `gat`, `gats`) held
/// while its newline has not arrived: memcached's own limit. No such command comes near it
/// (keys are at most [`KEY_LEN_MAX`] bytes), so past it the client is not speaking memcached
/// and the connection is closed without a reply, as memcached closes it. Ports with compiled
/// keys allow their longer keys on top (see `koshka_proto::ParseConfig`).
pub const UNTERMINATED_LINE_LEN_MAX: usize = 2048;

/// Most keys in one `get`/`gets`/`gat` line. memcached has no limit and its tests send 18 725
/// keys; this bounds the work of one line (one hash lookup per key) while staying far above
/// what clients send. A longer list gets `CLIENT_ERROR too many keys`.
pub const MULTIGET_KEYS_MAX: usize = 100_000;

/// Default most simultaneous client connections per node. Past it a new connection receives
/// memcached's `ERROR Too many open connections` and is closed.
pub const CONNECTIONS_DEFAULT: usize = 4096;

/// Ceiling for the configurable connection count.
pub const CONNECTIONS_MAX: usize = 65_536;

/// Default most bytes of replies queued for one connection. A client that never reads its
/// replies is disconnected when this is reached, so one slow reader cannot exhaust memory.
pub const OUTPUT_BUFFER_DEFAULT: usize = 16 * 1024 * 1024;

/// Ceiling for the per-connection output buffer.
pub const OUTPUT_BUFFER_MAX: usize = 256 * 1024 * 1024;

/// Largest binlog record payload (header excluded).
pub const BINLOG_RECORD_SIZE_MAX: usize = 128 * 1024 * 1024;

/// Bytes of framing around one binlog record payload (length, type, CRC and slack for a key).
pub const BINLOG_RECORD_OVERHEAD_MAX: usize = 1024 + COMPILED_KEY_LEN_MAX;

/// Largest binlog segment (file) before rotation, in bytes.
pub const BINLOG_SEGMENT_SIZE_MAX: u64 = 4 * 1024 * 1024 * 1024;

/// Default binlog segment size before rotation (256 MiB).
pub const BINLOG_SEGMENT_SIZE_DEFAULT: u64 = 256 * 1024 * 1024;

/// Default log bytes written since the last snapshot that trigger a new one (512 MiB).
pub const SNAPSHOT_LOG_BYTES_DEFAULT: u64 = 512 * 1024 * 1024;

/// Default nice value of the background snapshot thread (Linux nice values are per thread).
/// A snapshot copies, checksums and writes the whole state, about one core for its duration,
/// taken from the request workers. At nice 10 the scheduler gives it about a tenth of a
/// nice-0 worker's share while the workers are busy and all the idle CPU otherwise: under
/// load a snapshot takes longer instead of taking throughput. Nice is a weight, so it still
/// finishes under full load.
pub const SNAPSHOT_NICE_DEFAULT: i32 = 10;

/// Highest nice value (Linux): the lowest priority short of `SCHED_IDLE`.
pub const SNAPSHOT_NICE_MAX: i32 = 19;

/// Default pace of background snapshots in bytes per second; 0 writes as fast as the snapshot
/// thread gets CPU and disk.
pub const SNAPSHOT_RATE_DEFAULT: u64 = 0;

/// Default memory limit for engine data (1 GiB). At the limit, persistent kv answers
/// `SERVER_ERROR out of memory`; cache-mode kv evicts.
pub const MEMORY_LIMIT_DEFAULT: u64 = 1024 * 1024 * 1024;

/// Size classes memcached 1.6 reports with its defaults (`-f 1.25`, 96-byte smallest chunk,
/// 512 KiB largest). kv reports its items in these classes (`stats slabs`, `stats items`) and
/// `slabs reassign` accepts class ids up to it; kv checks its table against it at compile time.
pub const MEMCACHED_SLAB_CLASSES: usize = 39;

/// Most worker threads a node will start.
pub const THREADS_MAX: usize = 256;

/// Most bytes a `flush_all <delay>` or expiry may defer, in seconds (memcached: 30 days marks
/// the boundary between relative and absolute times).
pub const RELATIVE_EXPIRY_SECONDS_MAX: u32 = 60 * 60 * 24 * 30;

const _: () = assert!(VALUE_SIZE_DEFAULT <= VALUE_SIZE_MAX);
const _: () = assert!(VALUE_SIZE_MAX + BINLOG_RECORD_OVERHEAD_MAX <= BINLOG_RECORD_SIZE_MAX);
const _: () = assert!(KEY_LEN_MAX <= COMPILED_KEY_LEN_MAX);
const _: () = assert!(COMPILED_KEY_LEN_MAX < LINE_LEN_MAX);
const _: () = assert!(KEY_LEN_MAX + 512 < UNTERMINATED_LINE_LEN_MAX);
const _: () = assert!(UNTERMINATED_LINE_LEN_MAX + COMPILED_KEY_LEN_MAX < LINE_LEN_MAX);
// A line of LINE_LEN_MAX can name the most keys allowed, one byte and a space each.
const _: () = assert!(MULTIGET_KEYS_MAX * 2 < LINE_LEN_MAX);
const _: () = assert!(CONNECTIONS_DEFAULT <= CONNECTIONS_MAX);
const _: () = assert!(OUTPUT_BUFFER_DEFAULT <= OUTPUT_BUFFER_MAX);
const _: () = assert!(BINLOG_SEGMENT_SIZE_DEFAULT <= BINLOG_SEGMENT_SIZE_MAX);
const _: () = assert!((BINLOG_RECORD_SIZE_MAX as u64) < BINLOG_SEGMENT_SIZE_MAX);

/// Tunable limits of one node. Config may lower a value, never raise it past its ceiling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest value accepted by a store command.
    pub value_size_max: usize,
    /// Most simultaneous client connections.
    pub connections_max: usize,
    /// Most reply bytes queued for one connection before it is dropped.
    pub output_buffer_max: usize,
    /// Binlog segment size that triggers rotation.
    pub binlog_segment_size: u64,
    /// Log bytes since the last snapshot that trigger the next.
    pub snapshot_log_bytes: u64,
}

/// A tunable that exceeds its ceiling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limit {name} = {value} exceeds its ceiling {max}")]
pub struct LimitError {
    /// Name of the tunable.
    pub name: &'static str,
    /// Requested value.
    pub value: u64,
    /// Its ceiling.
    pub max: u64,
}

impl Limits {
    /// Defaults for production use.
    #[must_use]
    pub fn production() -> Self {
        Self {
            value_size_max: VALUE_SIZE_DEFAULT,
            connections_max: CONNECTIONS_DEFAULT,
            output_buffer_max: OUTPUT_BUFFER_DEFAULT,
            binlog_segment_size: BINLOG_SEGMENT_SIZE_DEFAULT,
            snapshot_log_bytes: SNAPSHOT_LOG_BYTES_DEFAULT,
        }
    }

    /// Tiny limits so tests reach rotation, snapshot and back-pressure paths quickly.
    #[must_use]
    pub fn test_min() -> Self {
        Self {
            value_size_max: 64 * 1024,
            connections_max: 64,
            output_buffer_max: 256 * 1024,
            binlog_segment_size: 64 * 1024,
            snapshot_log_bytes: 256 * 1024,
        }
    }

    /// Checks every tunable against its ceiling.
    ///
    /// # Errors
    /// The first tunable that exceeds its ceiling or is zero.
    pub fn validate(&self) -> Result<(), LimitError> {
        let checks: [(&'static str, u64, u64); 4] = [
            (
                "value_size_max",
                self.value_size_max as u64,
                VALUE_SIZE_MAX as u64,
            ),
            (
                "connections_max",
                self.connections_max as u64,
                CONNECTIONS_MAX as u64,
            ),
            (
                "output_buffer_max",
                self.output_buffer_max as u64,
                OUTPUT_BUFFER_MAX as u64,
            ),
            (
                "binlog_segment_size",
                self.binlog_segment_size,
                BINLOG_SEGMENT_SIZE_MAX,
            ),
        ];
        for (name, value, max) in checks {
            if value > max || value == 0 {
                return Err(LimitError { name, value, max });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        assert_eq!(Limits::production().validate(), Ok(()));
        assert_eq!(Limits::test_min().validate(), Ok(()));
    }

    #[test]
    fn ceiling_is_enforced() {
        let mut limits = Limits::production();
        limits.value_size_max = VALUE_SIZE_MAX + 1;
        let err = limits.validate().unwrap_err();
        assert_eq!(err.name, "value_size_max");
    }
}
