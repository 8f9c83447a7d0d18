//! What an upload really is, from its first bytes (never from its name or `Content-Type`),
//! and an image's dimensions and EXIF orientation read from its header, before any decoder
//! sees it. No I/O.

/// The formats processing accepts; each maps to exactly one ffmpeg demuxer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JPEG (`FF D8 FF`).
    Jpeg,
    /// PNG (`89 P N G \r \n 1A \n`).
    Png,
    /// GIF87a / GIF89a.
    Gif,
    /// WebP (`RIFF....WEBP`).
    Webp,
    /// ISO BMFF (MP4 / MOV: `ftyp` at offset 4).
    Mp4,
    /// Matroska / WebM (`1A 45 DF A3`).
    Matroska,
}

impl Format {
    /// The ffmpeg demuxer forced with `-f` (ffmpeg never probes).
    #[must_use]
    pub fn demuxer(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg_pipe",
            Self::Png => "png_pipe",
            Self::Gif => "gif",
            Self::Webp => "webp_pipe",
            Self::Mp4 => "mov",
            Self::Matroska => "matroska",
        }
    }

    /// Still image formats (the photo endpoint).
    #[must_use]
    pub fn is_image(self) -> bool {
        matches!(self, Self::Jpeg | Self::Png | Self::Gif | Self::Webp)
    }
}

/// The format of `data`, if it is one of the allowed ones.
#[must_use]
pub fn sniff(data: &[u8]) -> Option<Format> {
    if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Format::Jpeg)
    } else if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else if data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a") {
        Some(Format::Gif)
    } else if data.len() >= 12 && &data[0..4] == b"RIFF" && &data[8..12] == b"WEBP" {
        Some(Format::Webp)
    } else if data.len() >= 12 && &data[4..8] == b"ftyp" {
        Some(Format::Mp4)
    } else if data.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        Some(Format::Matroska)
    } else {
        None
    }
}

fn be16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
    ])))
}
fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}
fn le16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_le_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
    ])))
}
fn le24(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        0,
    ]))
}

/// Width and height from an image header, without decoding.
#[must_use]
pub fn image_size(format: Format, data: &[u8]) -> Option<(u32, u32)> {
    match format {
        Format::Png => {
            if data.get(12..16)? != b"IHDR" {
                return None;
            }
            Some((be32(data, 16)?, be32(data, 20)?))
        }
        Format::Gif => Some((le16(data, 6)?, le16(data, 8)?)),
        Format::Webp => match data.get(12..16)? {
            b"VP8 " => Some((le16(data, 26)? & 0x3FFF, le16(data, 28)? & 0x3FFF)),
            b"VP8L" => {
                let b = u32::from_le_bytes([
                    *data.get(21)?,
                    *data.get(22)?,
                    *data.get(23)?,
                    *data.get(24)?,
                ]);
                Some(((b & 0x3FFF) + 1, ((b >> 14) & 0x3FFF) + 1))
            }
            b"VP8X" => Some((le24(data, 24)? + 1, le24(data, 27)? + 1)),
            _ => None,
        },
        Format::Jpeg => jpeg_segments(data).find_map(|(marker, seg)| {
            // SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC).
            if (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker) {
                Some((be16(seg, 3)?, be16(seg, 1)?))
            } else {
                None
            }
        }),
        Format::Mp4 | Format::Matroska => None,
    }
}

/// JPEG marker segments before the scan: (marker, payload without the length field).
fn jpeg_segments(data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut pos = 2usize;
    std::iter::from_fn(move || loop {
        if *data.get(pos)? != 0xFF {
            return None;
        }
        let marker = *data.get(pos + 1)?;
        if marker == 0xFF {
            pos += 1;
            continue;
        }
        if marker == 0xDA || marker == 0xD9 {
            return None;
        }
        let len = be16(data, pos + 2)? as usize;
        if len < 2 {
            return None;
        }
        let seg = data.get(pos + 4..pos + 2 + len)?;
        pos += 2 + len;
        return Some((marker, seg));
    })
}

/// EXIF orientation (1..=8) of a JPEG; 1 when absent or unreadable.
#[must_use]
pub fn jpeg_orientation(data: &[u8]) -> u8 {
    jpeg_segments(data)
        .find_map(|(marker, seg)| {
            if marker == 0xE1 && seg.starts_with(b"Exif\0\0") {
                exif_orientation(&seg[6..])
            } else {
                None
            }
        })
        .unwrap_or(1)
}

fn exif_orientation(tiff: &[u8]) -> Option<u8> {
    let little = match tiff.get(0..2)? {
        b"II" => true,
        b"MM" => false,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u32> {
        if little {
            le16(tiff, at)
        } else {
            be16(tiff, at)
        }
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b = tiff.get(at..at + 4)?;
        let a = [b[0], b[1], b[2], b[3]];
        Some(if little {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    };
    let ifd = u32_at(4)? as usize;
    let count = u16_at(ifd)? as usize;
    for i in 0..count.min(512) {
        let e = ifd + 2 + i * 12;
        if u16_at(e)? == 0x0112 {
            let v = u16_at(e + 8)?;
            return u8::try_from(v).ok().filter(|v| (1..=8).contains(v));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_magic_not_names() {
        assert_eq!(sniff(b"\xFF\xD8\xFF\xE0rest"), Some(Format::Jpeg));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nxxxx"), Some(Format::Png));
        assert_eq!(sniff(b"\0\0\0\x18ftypisom...."), Some(Format::Mp4));
        assert_eq!(sniff(b"#EXTM3U\n#EXT-X-VERSION:3\n"), None);
        assert_eq!(sniff(b"ffconcat version 1.0\nfile '/etc/passwd'\n"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn png_size_from_ihdr() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&30_000u32.to_be_bytes());
        png.extend_from_slice(&20u32.to_be_bytes());
        assert_eq!(image_size(Format::Png, &png), Some((30_000, 20)));
        assert_eq!(image_size(Format::Png, &png[..20]), None);
    }

    #[test]
    fn exif_orientation_big_and_little_endian() {
        // II, IFD at 8, one entry: tag 0x0112 type 3 count 1 value 6.
        let tiff_le = b"II\x2a\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x06\0\0\0\0\0\0\0";
        assert_eq!(exif_orientation(tiff_le), Some(6));
        let tiff_be = b"MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x08\0\0\0\0\0\0";
        assert_eq!(exif_orientation(tiff_be), Some(8));
        assert_eq!(exif_orientation(b"II"), None);
    }
}
