//! The on-disk record of a volume ("needle"), as bytes in and bytes out. No I/O.
//!
//! Every record is a 40-byte little-endian header followed by `size` data bytes and zero
//! padding to a multiple of 8, so every record starts 8-aligned (the RAM index stores offsets
//! divided by 8). The header carries its own CRC32C, so a torn or garbage header is told apart
//! from a valid one without trusting any length field; the data has a separate CRC32C checked
//! on read.
//!
//! ```text
//!  0 magic   u32  "KMN1"
//!  4 kind    u8   1 file, 2 set flags (hide/unhide/delete), 3 volume header
//!  5 flags   u8   HIDDEN | DELETED (kind 1: flags at write time; kind 2: the new flags)
//!  6 ctype   u8   content type code (see [`ContentType`])
//!  7 zero    u8
//!  8 lid     u32  local id (kind 3: the volume id)
//! 12 size    u32  data bytes (0 for kinds 2 and 3)
//! 16 secret  u64  (kind 3: the volume generation, bumped by every compaction)
//! 24 time    u32  unix seconds
//! 28 crc     u32  CRC32C of the data
//! 32 zero    u32
//! 36 hcrc    u32  CRC32C of bytes 0..36
//! 40 data, zero padding to 8
//! ```

/// The first four bytes of every record.
pub const MAGIC: [u8; 4] = *b"KMN1";
/// Header bytes before the data.
pub const HEADER_LEN: usize = 40;
/// Record alignment (offsets in the index are in these units).
pub const ALIGN: u64 = 8;

/// Flag: the file is hidden (served as a 1×1 PNG).
pub const FLAG_HIDDEN: u8 = 1;
/// Flag: the file is deleted (tombstone; 404; dropped by compaction).
pub const FLAG_DELETED: u8 = 2;
/// Flags a record may carry on disk.
pub const FLAGS_STORED: u8 = FLAG_HIDDEN | FLAG_DELETED;

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A stored file.
    File = 1,
    /// New flags for an earlier file (hide, unhide, delete).
    SetFlags = 2,
    /// First record of a volume file: volume id and generation.
    VolumeHeader = 3,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::File),
            2 => Some(Kind::SetFlags),
            3 => Some(Kind::VolumeHeader),
            _ => None,
        }
    }
}

/// Content types a file may be stored with: one byte on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// `application/octet-stream`
    Octet = 0,
    /// `image/jpeg`
    Jpeg = 1,
    /// `image/png`
    Png = 2,
    /// `image/gif`
    Gif = 3,
    /// `image/webp`
    Webp = 4,
    /// `video/mp4`
    Mp4 = 5,
    /// `video/webm`
    Webm = 6,
    /// `text/plain`
    Text = 7,
}

impl ContentType {
    /// Every content type, in code order.
    pub const ALL: [ContentType; 8] = [
        Self::Octet,
        Self::Jpeg,
        Self::Png,
        Self::Gif,
        Self::Webp,
        Self::Mp4,
        Self::Webm,
        Self::Text,
    ];

    /// From the on-disk code (unknown codes read as octet-stream).
    #[must_use]
    pub fn from_code(code: u8) -> ContentType {
        Self::ALL
            .get(usize::from(code))
            .copied()
            .unwrap_or(Self::Octet)
    }

    /// The MIME type.
    #[must_use]
    pub fn mime(self) -> &'static str {
        match self {
            Self::Octet => "application/octet-stream",
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Gif => "image/gif",
            Self::Webp => "image/webp",
            Self::Mp4 => "video/mp4",
            Self::Webm => "video/webm",
            Self::Text => "text/plain",
        }
    }

    /// The URL extension.
    #[must_use]
    pub fn ext(self) -> &'static str {
        match self {
            Self::Octet => "bin",
            Self::Jpeg => "jpg",
            Self::Png => "png",
            Self::Gif => "gif",
            Self::Webp => "webp",
            Self::Mp4 => "mp4",
            Self::Webm => "webm",
            Self::Text => "txt",
        }
    }

    /// From a `Content-Type` header value (parameters ignored); unknown types are octet-stream.
    #[must_use]
    pub fn from_mime(mime: &str) -> ContentType {
        let base = mime.split(';').next().unwrap_or("").trim();
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.mime().eq_ignore_ascii_case(base))
            .unwrap_or(Self::Octet)
    }
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the record is.
    pub kind: Kind,
    /// Flags (see the module comment).
    pub flags: u8,
    /// Content type code.
    pub ctype: u8,
    /// Local id (volume id for a volume header).
    pub lid: u32,
    /// Data bytes.
    pub size: u32,
    /// Secret (generation for a volume header).
    pub secret: u64,
    /// Unix seconds.
    pub time: u32,
    /// CRC32C of the data.
    pub crc: u32,
}

/// Why a header did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer than [`HEADER_LEN`] bytes.
    #[error("short header")]
    Short,
    /// The magic is wrong.
    #[error("bad magic")]
    Magic,
    /// The header checksum does not match.
    #[error("header checksum mismatch")]
    Checksum,
    /// Unknown kind byte.
    #[error("unknown record kind")]
    Kind,
}

/// Bytes a record with `size` data bytes occupies, padding included.
#[must_use]
pub fn record_len(size: u32) -> u64 {
    HEADER_LEN as u64 + u64::from(size).div_ceil(ALIGN) * ALIGN
}

impl Header {
    /// The encoded 40 bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = self.kind as u8;
        b[5] = self.flags;
        b[6] = self.ctype;
        b[8..12].copy_from_slice(&self.lid.to_le_bytes());
        b[12..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..24].copy_from_slice(&self.secret.to_le_bytes());
        b[24..28].copy_from_slice(&self.time.to_le_bytes());
        b[28..32].copy_from_slice(&self.crc.to_le_bytes());
        let hcrc = crc32c::crc32c(&b[0..36]);
        b[36..40].copy_from_slice(&hcrc.to_le_bytes());
        b
    }

    /// Decodes and checks the first [`HEADER_LEN`] bytes of `b`.
    ///
    /// # Errors
    /// A short, foreign, damaged or unknown header.
    pub fn decode(b: &[u8]) -> Result<Header, HeaderError> {
        let b = b.get(..HEADER_LEN).ok_or(HeaderError::Short)?;
        if b[0..4] != MAGIC {
            return Err(HeaderError::Magic);
        }
        if crc32c::crc32c(&b[0..36]) != le32(&b[36..40]) {
            return Err(HeaderError::Checksum);
        }
        Ok(Header {
            kind: Kind::from_u8(b[4]).ok_or(HeaderError::Kind)?,
            flags: b[5],
            ctype: b[6],
            lid: le32(&b[8..12]),
            size: le32(&b[12..16]),
            secret: u64::from(le32(&b[16..20])) | (u64::from(le32(&b[20..24])) << 32),
            time: le32(&b[24..28]),
            crc: le32(&b[28..32]),
        })
    }
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// A whole encoded record: header, data, padding.
#[must_use]
pub fn encode_record(header: &Header, data: &[u8]) -> Vec<u8> {
    let len = usize::try_from(record_len(header.size)).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(data);
    out.resize(len, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn header_round_trips(flags in 0u8..4, ctype in 0u8..8, lid: u32, size in 0u32..1 << 26,
                              secret: u64, time: u32, crc: u32) {
            let h = Header { kind: Kind::File, flags, ctype, lid, size, secret, time, crc };
            prop_assert_eq!(Header::decode(&h.encode()), Ok(h));
        }

        #[test]
        fn any_flipped_header_bit_is_caught(bit in 0usize..HEADER_LEN * 8) {
            let h = Header { kind: Kind::File, flags: 0, ctype: 1, lid: 7, size: 100,
                             secret: 42, time: 1, crc: 9 };
            let mut b = h.encode();
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Header::decode(&b).is_err());
        }
    }

    #[test]
    fn records_are_aligned() {
        assert_eq!(record_len(0), 40);
        assert_eq!(record_len(1), 48);
        assert_eq!(record_len(8), 48);
        assert_eq!(record_len(9), 56);
        let h = Header {
            kind: Kind::File,
            flags: 0,
            ctype: 0,
            lid: 1,
            size: 3,
            secret: 1,
            time: 0,
            crc: crc32c::crc32c(b"abc"),
        };
        assert_eq!(encode_record(&h, b"abc").len(), 48);
    }

    #[test]
    fn content_types_round_trip() {
        for t in ContentType::ALL {
            assert_eq!(ContentType::from_code(t as u8), t);
            assert_eq!(ContentType::from_mime(t.mime()), t);
        }
        assert_eq!(ContentType::from_mime("image/jpeg; q=1"), ContentType::Jpeg);
        assert_eq!(ContentType::from_mime("text/html"), ContentType::Octet);
    }
}
