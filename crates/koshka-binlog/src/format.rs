//! On-disk layouts: segment header, record framing, snapshot container, file names.
//!
//! Everything is little-endian. `docs/binlog.md` is the prose version of this module; the two
//! must agree.

use std::path::Path;

use koshka_engine::ShardSpec;

/// First 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"KSHKBLOG";

/// First 8 bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"KSHKSNAP";

/// Last 4 bytes of every snapshot file (after the body length and CRC).
pub const SNAPSHOT_TRAILER_MAGIC: [u8; 4] = *b"SEND";

/// Format version written into segment and snapshot headers. A reader refuses any other.
pub const FORMAT_VERSION: u16 = 1;

/// Size of the segment header, in bytes. Log positions exclude it.
pub const SEGMENT_HEADER_SIZE: usize = 64;

/// Size of the snapshot header, in bytes.
pub const SNAPSHOT_HEADER_SIZE: usize = 64;

/// Size of the snapshot trailer (body length, body CRC, trailer magic), in bytes.
pub const SNAPSHOT_TRAILER_SIZE: usize = 16;

/// Size of the framing in front of every record payload, in bytes.
pub const RECORD_HEADER_SIZE: usize = 16;

/// Longest engine name, in bytes: the name is stored zero-padded in a 16-byte header field.
/// A longer (or empty, or non `[a-z0-9_-]`) name is refused when the log is opened.
pub const ENGINE_NAME_LEN_MAX: usize = 16;

/// Largest record payload, in bytes. [`crate::Binlog`] refuses a larger append with
/// `Error::Journal`; a reader treats a larger length field as corruption.
pub const RECORD_PAYLOAD_MAX: usize = koshka_limits::BINLOG_RECORD_SIZE_MAX;

/// Record types from this value up are reserved for the binlog itself. Engines use
/// `0..RECORD_TYPE_RESERVED_MIN`; appending a reserved type fails.
pub const RECORD_TYPE_RESERVED_MIN: u16 = 0xff00;

/// The TIME record: a 4-byte payload holding the unix second in force for every following
/// record, until the next TIME record.
pub const RECORD_TYPE_TIME: u16 = 0xff01;

/// Payload size of a TIME record.
pub const TIME_PAYLOAD_SIZE: usize = 4;

/// Size of a whole TIME record on disk.
pub const TIME_RECORD_SIZE: usize = RECORD_HEADER_SIZE + TIME_PAYLOAD_SIZE;

const _: () = assert!(RECORD_PAYLOAD_MAX <= u32::MAX as usize);
const _: () = assert!(RECORD_TYPE_TIME >= RECORD_TYPE_RESERVED_MIN);
const _: () = assert!(SEGMENT_HEADER_SIZE == 40 + ENGINE_NAME_LEN_MAX + 8);
const _: () = assert!(SNAPSHOT_HEADER_SIZE == SEGMENT_HEADER_SIZE);

/// Whether `record_type` is a binlog-internal record (TIME, …) that engines never see.
#[must_use]
pub fn is_reserved(record_type: u16) -> bool {
    record_type >= RECORD_TYPE_RESERVED_MIN
}

/// Advances the log chain value over one record: the chain is a CRC32C over the sequence of
/// the records' CRC fields, so it identifies the whole log prefix up to a position.
#[must_use]
pub fn chain_next(chain: u32, record_crc: u32) -> u32 {
    crc32c::crc32c_append(chain, &record_crc.to_le_bytes())
}

/// The framing of one record.
///
/// ```text
///  0        4        6        8                12               16
/// +--------+--------+--------+----------------+----------------+------------------+
/// | len u32| type   | flags  | crc u32         | hcrc u32       | payload (len B)  |
/// |        | u16    | u16 =0 | crc32c(0..8 ++ | crc32c(0..12)  |                  |
/// |        |        |        |  payload)      |                |                  |
/// +--------+--------+--------+----------------+----------------+------------------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Payload length in bytes.
    pub len: u32,
    /// Record type.
    pub record_type: u16,
    /// CRC32C over header bytes 0..8 followed by the payload.
    pub crc: u32,
}

impl RecordHeader {
    /// Builds the header of a record, computing its CRC.
    #[must_use]
    pub fn new(record_type: u16, payload: &[u8]) -> Self {
        debug_assert!(payload.len() <= RECORD_PAYLOAD_MAX);
        #[expect(clippy::cast_possible_truncation)]
        // NOTE: callers check the length against RECORD_PAYLOAD_MAX, which fits u32.
        let len = payload.len() as u32;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&Self::prefix(len, record_type)), payload);
        Self {
            len,
            record_type,
            crc,
        }
    }

    fn prefix(len: u32, record_type: u16) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0..4].copy_from_slice(&len.to_le_bytes());
        b[4..6].copy_from_slice(&record_type.to_le_bytes());
        b
    }

    /// Encodes the header.
    #[must_use]
    pub fn encode(&self) -> [u8; RECORD_HEADER_SIZE] {
        let mut b = [0u8; RECORD_HEADER_SIZE];
        b[0..8].copy_from_slice(&Self::prefix(self.len, self.record_type));
        b[8..12].copy_from_slice(&self.crc.to_le_bytes());
        let hcrc = crc32c::crc32c(&b[0..12]);
        b[12..16].copy_from_slice(&hcrc.to_le_bytes());
        b
    }

    /// Decodes and checks a header (its own CRC, flags, length bound). `Err` names the defect.
    ///
    /// # Errors
    /// A reason string when the header is invalid.
    pub fn decode(b: &[u8; RECORD_HEADER_SIZE]) -> Result<Self, &'static str> {
        let hcrc = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
        if crc32c::crc32c(&b[0..12]) != hcrc {
            return Err("record header CRC mismatch");
        }
        if b[6] != 0 || b[7] != 0 {
            return Err("record header flags are not zero");
        }
        let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if len as usize > RECORD_PAYLOAD_MAX {
            return Err("record length exceeds the maximum");
        }
        Ok(Self {
            len,
            record_type: u16::from_le_bytes([b[4], b[5]]),
            crc: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        })
    }

    /// Whether `payload` matches the header's CRC.
    #[must_use]
    pub fn check_payload(&self, payload: &[u8]) -> bool {
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&Self::prefix(self.len, self.record_type)),
            payload,
        );
        crc == self.crc
    }

    /// Size of the whole record on disk.
    #[must_use]
    pub fn total_len(&self) -> u64 {
        RECORD_HEADER_SIZE as u64 + u64::from(self.len)
    }
}

/// The header shared by segment and snapshot files (they differ in magic only).
///
/// ```text
///  0          8       10      12        16        20         24          32        36
/// +----------+-------+-------+---------+---------+----------+-----------+---------+
/// | magic 8B | ver   | hsize | shard   | shard   | time u32 | pos u64   | chain   |
/// |          | u16=1 | u16=64| index   | count   | in force | (absolute)| u32     |
/// +----------+-------+-------+---------+---------+----------+-----------+---------+
///  36         40                       56         60         64
/// +----------+------------------------+----------+----------+
/// | created  | engine name, 16 B,     | reserved | hcrc u32 |
/// | u32      | ASCII, zero padded     | u32 = 0  | 0..60    |
/// +----------+------------------------+----------+----------+
/// ```
/// For a segment, `pos` is the log position of its first record and `chain`/`time` are the
/// chain value and time in force at that position. For a snapshot, `pos` is where replay
/// starts and `chain`/`time` are the values at that position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeader {
    /// Engine name.
    pub engine: String,
    /// Shard of the engine.
    pub shard: ShardSpec,
    /// Log position (see the type docs).
    pub pos: u64,
    /// Chain value at `pos`.
    pub chain: u32,
    /// Log time in force at `pos`.
    pub time: u32,
    /// Wall-clock creation time of the file.
    pub created: u32,
}

impl FileHeader {
    /// Encodes with the given magic.
    #[must_use]
    pub fn encode(&self, magic: [u8; 8]) -> [u8; SEGMENT_HEADER_SIZE] {
        let mut b = [0u8; SEGMENT_HEADER_SIZE];
        b[0..8].copy_from_slice(&magic);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        #[expect(clippy::cast_possible_truncation)]
        // NOTE: the header size is a small constant.
        b[10..12].copy_from_slice(&(SEGMENT_HEADER_SIZE as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.shard.index.to_le_bytes());
        b[16..20].copy_from_slice(&self.shard.count.to_le_bytes());
        b[20..24].copy_from_slice(&self.time.to_le_bytes());
        b[24..32].copy_from_slice(&self.pos.to_le_bytes());
        b[32..36].copy_from_slice(&self.chain.to_le_bytes());
        b[36..40].copy_from_slice(&self.created.to_le_bytes());
        let name = self.engine.as_bytes();
        let n = name.len().min(ENGINE_NAME_LEN_MAX);
        b[40..40 + n].copy_from_slice(&name[..n]);
        let crc = crc32c::crc32c(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header with the given magic.
    ///
    /// # Errors
    /// A reason string when the header is invalid.
    pub fn decode(b: &[u8; SEGMENT_HEADER_SIZE], magic: [u8; 8]) -> Result<Self, String> {
        if b[0..8] != magic {
            return Err("bad magic".into());
        }
        let crc = u32_at(b, 60);
        if crc32c::crc32c(&b[0..60]) != crc {
            return Err("header CRC mismatch".into());
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != FORMAT_VERSION {
            return Err(format!(
                "format version {version}, this build reads {FORMAT_VERSION}"
            ));
        }
        let hsize = u16::from_le_bytes([b[10], b[11]]);
        if usize::from(hsize) != SEGMENT_HEADER_SIZE {
            return Err(format!(
                "header size {hsize}, expected {SEGMENT_HEADER_SIZE}"
            ));
        }
        let name = &b[40..56];
        let end = name
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(ENGINE_NAME_LEN_MAX);
        let engine = std::str::from_utf8(&name[..end])
            .map_err(|_| "engine name is not UTF-8".to_string())?
            .to_string();
        Ok(Self {
            engine,
            shard: ShardSpec {
                index: u32_at(b, 12),
                count: u32_at(b, 16),
            },
            time: u32_at(b, 20),
            pos: u64::from_le_bytes([b[24], b[25], b[26], b[27], b[28], b[29], b[30], b[31]]),
            chain: u32_at(b, 32),
            created: u32_at(b, 36),
        })
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Checks that an engine name is usable in file names and headers.
///
/// # Errors
/// A reason string for an empty, too long or non `[a-z0-9_-]` name.
pub fn check_engine_name(engine: &str) -> Result<(), String> {
    if engine.is_empty() || engine.len() > ENGINE_NAME_LEN_MAX {
        return Err(format!(
            "engine name {engine:?} must be 1..={ENGINE_NAME_LEN_MAX} bytes"
        ));
    }
    if !engine
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
    {
        return Err(format!("engine name {engine:?} must match [a-z0-9_-]+"));
    }
    Ok(())
}

/// Digits of the position in file names: enough for any u64, so names sort as numbers.
pub const FILE_POS_DIGITS: usize = 20;

/// File name of the segment starting at `pos`: `<engine>.<pos, 20 digits>.bin`.
#[must_use]
pub fn segment_file_name(engine: &str, pos: u64) -> String {
    format!("{engine}.{pos:0width$}.bin", width = FILE_POS_DIGITS)
}

/// File name of the snapshot whose replay starts at `pos`: `<engine>.<pos, 20 digits>.snap`.
#[must_use]
pub fn snapshot_file_name(engine: &str, pos: u64) -> String {
    format!("{engine}.{pos:0width$}.snap", width = FILE_POS_DIGITS)
}

/// Parses `<engine>.<digits>.<ext>`, returning the engine and the position.
#[must_use]
pub fn parse_file_name<'a>(path: &'a Path, ext: &str) -> Option<(&'a str, u64)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    let (engine, digits) = stem.rsplit_once('.')?;
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    check_engine_name(engine).ok()?;
    Some((engine, digits.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_header_round_trip() {
        let h = RecordHeader::new(7, b"hello");
        let b = h.encode();
        assert_eq!(RecordHeader::decode(&b), Ok(h));
        assert!(h.check_payload(b"hello"));
        assert!(!h.check_payload(b"hellp"));
        for bit in 0..(RECORD_HEADER_SIZE * 8) {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(RecordHeader::decode(&c).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn file_header_round_trip() {
        let h = FileHeader {
            engine: "kv".into(),
            shard: ShardSpec { index: 3, count: 8 },
            pos: 1 << 40,
            chain: 0xdead_beef,
            time: 1_700_000_000,
            created: 1_700_000_001,
        };
        let b = h.encode(SEGMENT_MAGIC);
        assert_eq!(FileHeader::decode(&b, SEGMENT_MAGIC), Ok(h));
        assert!(FileHeader::decode(&b, SNAPSHOT_MAGIC).is_err());
    }

    #[test]
    fn names() {
        let n = segment_file_name("kv", 42);
        assert_eq!(n, "kv.00000000000000000042.bin");
        assert_eq!(parse_file_name(Path::new(&n), "bin"), Some(("kv", 42)));
        assert_eq!(parse_file_name(Path::new("kv.x.bin"), "bin"), None);
        assert_eq!(
            parse_file_name(Path::new(&snapshot_file_name("kv", 9)), "snap"),
            Some(("kv", 9))
        );
        assert!(check_engine_name("Kv").is_err());
        assert!(check_engine_name("messages").is_ok());
    }
}
