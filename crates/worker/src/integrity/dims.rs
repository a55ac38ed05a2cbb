//! Image sizes from the first bytes of a file (PNG, JPEG, WebP, GIF, BMP).
//!
//! The numbers come from `imagesize`; this module recognises the five formats
//! by their magic bytes, says how many bytes a header needs when the first
//! chunk is not enough (a JPEG's frame header can sit behind large EXIF/ICC
//! segments), and fixes two readings `imagesize` takes literally (a top-down
//! BMP's negative height, the scale bits of a lossy WebP's size).

/// The formats checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Jpeg,
    Webp,
    Gif,
    Bmp,
}

impl ImageFormat {
    /// Lower-case name, as in messages.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Webp => "webp",
            ImageFormat::Gif => "gif",
            ImageFormat::Bmp => "bmp",
        }
    }

    /// Bytes from the start that hold the size (JPEG: only its first marker).
    fn header_len(self) -> usize {
        match self {
            ImageFormat::Png => 24,
            ImageFormat::Jpeg => 4,
            ImageFormat::Webp => 30,
            ImageFormat::Gif => 10,
            ImageFormat::Bmp => 26,
        }
    }
}

/// Why no size could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DimsError {
    /// The bytes given end inside the header: call again with at least
    /// `need` bytes from the start of the file.
    #[error("the header needs at least {need} bytes, only {have} were given")]
    NeedMore { have: usize, need: usize },
    /// The bytes are none of PNG, JPEG, WebP, GIF, BMP.
    #[error("not a PNG, JPEG, WebP, GIF or BMP file (starts with {0})")]
    UnknownFormat(String),
    /// The format is known but its header is broken.
    #[error("broken {format} header: {why}")]
    Corrupt { format: &'static str, why: String },
}

/// Recognises one of the five formats from its magic bytes.
pub fn sniff_format(b: &[u8]) -> Result<ImageFormat, DimsError> {
    let need_more = |need: usize| DimsError::NeedMore {
        have: b.len(),
        need,
    };
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Ok(ImageFormat::Png);
    }
    if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Ok(ImageFormat::Jpeg);
    }
    if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        return Ok(ImageFormat::Gif);
    }
    if b.starts_with(b"BM") {
        return Ok(ImageFormat::Bmp);
    }
    if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        return Ok(ImageFormat::Webp);
    }
    // A prefix of a magic number: the answer needs more bytes.
    let magics: [&[u8]; 6] = [
        b"\x89PNG\r\n\x1a\n",
        &[0xFF, 0xD8, 0xFF],
        b"GIF87a",
        b"GIF89a",
        b"BM",
        b"RIFF",
    ];
    if b.len() < 12
        && magics
            .iter()
            .any(|m| m.starts_with(&b[..b.len().min(m.len())]))
    {
        return Err(need_more(12));
    }
    Err(DimsError::UnknownFormat(hex_start(b)))
}

fn hex_start(b: &[u8]) -> String {
    if b.is_empty() {
        return "nothing: the file is empty".into();
    }
    b.iter().take(8).map(|x| format!("{x:02x}")).collect()
}

/// Width and height from the first bytes of an image file.
///
/// `Err(NeedMore { need, .. })` when `first_bytes` ends inside the header
/// (for a JPEG: before its frame header); any other error is final.
pub fn image_dims(first_bytes: &[u8]) -> Result<(u32, u32), DimsError> {
    let format = sniff_format(first_bytes)?;
    let need = match format {
        ImageFormat::Jpeg => jpeg_frame_end(first_bytes)?,
        other => other.header_len(),
    };
    if first_bytes.len() < need {
        return Err(DimsError::NeedMore {
            have: first_bytes.len(),
            need,
        });
    }
    let corrupt = |why: String| DimsError::Corrupt {
        format: format.name(),
        why,
    };
    if format == ImageFormat::Png && &first_bytes[12..16] != b"IHDR" {
        return Err(corrupt("the first chunk is not IHDR".into()));
    }
    let size = imagesize::blob_size(first_bytes).map_err(|e| corrupt(e.to_string()))?;
    let (w, h) = fix_size(format, first_bytes, size.width as u64, size.height as u64);
    match (u32::try_from(w), u32::try_from(h)) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(corrupt(format!("it claims {w}x{h} pixels"))),
    }
}

/// Readings `imagesize` takes literally.
fn fix_size(format: ImageFormat, b: &[u8], w: u64, h: u64) -> (u64, u64) {
    match format {
        // Height is signed: negative means rows are stored top-down.
        ImageFormat::Bmp => {
            let core_header = u32::from_le_bytes([b[14], b[15], b[16], b[17]]) == 12;
            if core_header {
                (
                    u16::from_le_bytes([b[18], b[19]]) as u64,
                    u16::from_le_bytes([b[20], b[21]]) as u64,
                )
            } else {
                let sw = i32::from_le_bytes([b[18], b[19], b[20], b[21]]);
                let sh = i32::from_le_bytes([b[22], b[23], b[24], b[25]]);
                (sw.unsigned_abs() as u64, sh.unsigned_abs() as u64)
            }
        }
        // Lossy VP8: the top two bits of each 16-bit size are a scale.
        ImageFormat::Webp if b[15] == b' ' => (w & 0x3FFF, h & 0x3FFF),
        _ => (w, h),
    }
}

/// Walks a JPEG's segments the way `imagesize` does and returns how many
/// bytes from the start hold its first frame header (SOFn); `NeedMore`
/// when `b` ends before that.
fn jpeg_frame_end(b: &[u8]) -> Result<usize, DimsError> {
    let mut pos = 2usize;
    let need_more = |need: usize| DimsError::NeedMore {
        have: b.len(),
        need,
    };
    let mut depth = 0i32;
    loop {
        if b.len() < pos + 4 {
            return Err(need_more(pos + 4));
        }
        if b[pos] != 0xFF {
            return Err(DimsError::Corrupt {
                format: "jpeg",
                why: format!("no segment marker at byte {pos} before the frame header"),
            });
        }
        let page = b[pos + 1];
        let is_sof = matches!(page, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF);
        if is_sof && depth == 0 {
            // Marker, length, precision, height, width.
            return Ok(pos + 9);
        }
        if page == 0xD8 {
            depth += 1;
        } else if page == 0xD9 {
            depth -= 1;
        }
        let len = u16::from_be_bytes([b[pos + 2], b[pos + 3]]) as usize;
        if len < 2 {
            return Err(DimsError::Corrupt {
                format: "jpeg",
                why: format!("segment at byte {pos} has length {len}"),
            });
        }
        pos += 2 + len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_header_is_read_and_short_input_asks_for_more() {
        let mut h = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
        h.extend_from_slice(&640u32.to_be_bytes());
        h.extend_from_slice(&480u32.to_be_bytes());
        assert_eq!(image_dims(&h), Ok((640, 480)));
        assert_eq!(
            image_dims(&h[..20]),
            Err(DimsError::NeedMore { have: 20, need: 24 })
        );
        assert_eq!(
            image_dims(&h[..5]),
            Err(DimsError::NeedMore { have: 5, need: 12 })
        );
    }

    #[test]
    fn top_down_bmp_has_a_positive_height() {
        let mut b = vec![0u8; 54];
        b[..2].copy_from_slice(b"BM");
        b[14..18].copy_from_slice(&40u32.to_le_bytes());
        b[18..22].copy_from_slice(&7i32.to_le_bytes());
        b[22..26].copy_from_slice(&(-5i32).to_le_bytes());
        assert_eq!(image_dims(&b), Ok((7, 5)));
    }

    #[test]
    fn garbage_is_unknown() {
        assert!(matches!(
            image_dims(b"hello, world, this is text"),
            Err(DimsError::UnknownFormat(_))
        ));
        assert!(matches!(image_dims(b""), Err(DimsError::NeedMore { .. })));
    }
}
