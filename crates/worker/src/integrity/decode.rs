//! Full decodes with the `image` crate (PNG, JPEG, WebP, GIF, BMP), refusing
//! decompression bombs before any pixel buffer is allocated.
//!
//! Memory of one decode: the pixel buffer (at most `max_pixels` × 4 bytes;
//! anything needing more is refused), plus, for JPEG, a copy of the file's
//! bytes (the decoder works on a slice; files larger than
//! `max_pixels` × 4 + 1 MiB are refused), plus the decoder's own tables.
//! One image is decoded at a time by the calling thread.

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read, Seek};
use std::path::Path;

use image::codecs::bmp::BmpDecoder;
use image::codecs::gif::GifDecoder;
use image::codecs::jpeg::JpegDecoder;
use image::codecs::png::PngDecoder;
use image::codecs::webp::WebPDecoder;
use image::{ImageDecoder, ImageError, Limits};

use super::dims::{DimsError, ImageFormat, sniff_format};

/// Default cap of decoded pixels: 2^23 (e.g. 4096×2048). 32 MiB of RGBA.
pub const DEFAULT_MAX_PIXELS: u64 = 1 << 23;
/// Decoded bytes allowed per pixel of the cap (8-bit RGBA).
const BYTES_PER_PIXEL_CAP: u64 = 4;

/// Why an image did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header claims more than the cap; nothing was allocated.
    #[error("{what}; not decoded (cap {max_pixels} pixels, see --max-pixels)")]
    TooManyPixels { what: String, max_pixels: u64 },
    /// Not one of the five formats (or its header is unreadable).
    #[error("{0}")]
    Unrecognised(DimsError),
    /// The decoder's own message.
    #[error("{format} decoder: {message}")]
    Failed {
        format: &'static str,
        message: String,
    },
    /// The file could not be read back for decoding.
    #[error("cannot read the file to decode it: {0}")]
    Io(String),
}

/// Decodes a whole image held in memory; `Ok((width, height))` when every
/// pixel decoded.
pub fn decode_check(bytes: &[u8], max_pixels: u64) -> Result<(u32, u32), DecodeError> {
    let format = sniff_format(bytes).map_err(DecodeError::Unrecognised)?;
    let dims = decode_reader(Cursor::new(bytes), format, bytes.len() as u64, max_pixels)?;
    if format == ImageFormat::Jpeg && !jpeg_ends_after_scan(bytes) {
        // The JPEG decoder fills a cut-off scan with grey and succeeds; PIL
        // (and so the trainer) refuses such a file as truncated.
        return Err(DecodeError::Failed {
            format: "jpeg",
            message: "the file ends before its end-of-image marker (truncated)".into(),
        });
    }
    Ok(dims)
}

/// Whether an end-of-image marker follows the first scan. Entropy-coded data
/// escapes 0xFF, so `FF D9` after the first SOS is the end of the image
/// (an EXIF thumbnail's own EOI sits before it and does not count).
fn jpeg_ends_after_scan(b: &[u8]) -> bool {
    let mut pos = 2usize;
    // Walk the segments to the first start-of-scan.
    while pos + 4 <= b.len() && b[pos] == 0xFF {
        let marker = b[pos + 1];
        if marker == 0xFF {
            pos += 1;
            continue;
        }
        let len = u16::from_be_bytes([b[pos + 2], b[pos + 3]]) as usize;
        pos += 2 + len;
        if marker == 0xDA {
            return b
                .get(pos..)
                .is_some_and(|scan| scan.windows(2).any(|w| w == [0xFF, 0xD9]));
        }
    }
    false
}

/// Decodes an image file (read through a small buffer, not whole, except
/// JPEG: see the module notes).
pub fn decode_file(path: &Path, max_pixels: u64) -> Result<(u32, u32), DecodeError> {
    let io = |e: std::io::Error| DecodeError::Io(format!("{}: {e}", path.display()));
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut reader = BufReader::with_capacity(64 << 10, file);
    let head = reader.fill_buf().map_err(io)?;
    let format = sniff_format(head).map_err(DecodeError::Unrecognised)?;
    if format == ImageFormat::Jpeg {
        // The JPEG decoder reads the file whole anyway; the size is capped first.
        check_jpeg_len(len, max_pixels)?;
        let mut bytes = Vec::with_capacity(len as usize);
        reader.read_to_end(&mut bytes).map_err(io)?;
        return decode_check(&bytes, max_pixels);
    }
    decode_reader(reader, format, len, max_pixels)
}

/// Decodes from a reader of a known format; `len` is the encoded size.
pub fn decode_reader<R: BufRead + Seek>(
    r: R,
    format: ImageFormat,
    len: u64,
    max_pixels: u64,
) -> Result<(u32, u32), DecodeError> {
    if format == ImageFormat::Jpeg {
        check_jpeg_len(len, max_pixels)?;
    }
    let failed = |e: ImageError| match e {
        ImageError::Limits(l) => DecodeError::TooManyPixels {
            what: format!("the decoder hit its memory limit ({l})"),
            max_pixels,
        },
        other => DecodeError::Failed {
            format: format.name(),
            message: other.to_string(),
        },
    };
    match format {
        ImageFormat::Png => run(PngDecoder::new(r).map_err(failed)?, max_pixels, &failed),
        ImageFormat::Jpeg => run(JpegDecoder::new(r).map_err(failed)?, max_pixels, &failed),
        ImageFormat::Webp => run(WebPDecoder::new(r).map_err(failed)?, max_pixels, &failed),
        ImageFormat::Gif => run(GifDecoder::new(r).map_err(failed)?, max_pixels, &failed),
        ImageFormat::Bmp => run(BmpDecoder::new(r).map_err(failed)?, max_pixels, &failed),
    }
}

/// A JPEG is decoded from a copy of its bytes: refuse files larger than any
/// JPEG within the pixel cap needs.
fn check_jpeg_len(len: u64, max_pixels: u64) -> Result<(), DecodeError> {
    if len > max_pixels.saturating_mul(BYTES_PER_PIXEL_CAP) + (1 << 20) {
        return Err(DecodeError::TooManyPixels {
            what: format!(
                "the JPEG file is {len} bytes, more than a JPEG within the pixel cap can need"
            ),
            max_pixels,
        });
    }
    Ok(())
}

/// Checks the claimed size against the cap, then decodes every pixel
/// (GIF: the first frame, as trainers load it).
fn run<D: ImageDecoder>(
    mut decoder: D,
    max_pixels: u64,
    failed: &dyn Fn(ImageError) -> DecodeError,
) -> Result<(u32, u32), DecodeError> {
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    let max_bytes = max_pixels.saturating_mul(BYTES_PER_PIXEL_CAP);
    if pixels > max_pixels {
        return Err(DecodeError::TooManyPixels {
            what: format!("the header claims {w}x{h} = {pixels} pixels"),
            max_pixels,
        });
    }
    let total = decoder.total_bytes();
    if total > max_bytes {
        return Err(DecodeError::TooManyPixels {
            what: format!(
                "{w}x{h} {:?} needs {total} bytes decoded, more than {max_bytes}",
                decoder.color_type()
            ),
            max_pixels,
        });
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(w.max(1));
    limits.max_image_height = Some(h.max(1));
    // Room for the output plus the decoder's working buffers.
    limits.max_alloc = Some(max_bytes.saturating_mul(2).max(16 << 20));
    decoder.set_limits(limits).map_err(failed)?;
    let mut buf = vec![0u8; total as usize];
    decoder.read_image(&mut buf).map_err(failed)?;
    Ok((w, h))
}
