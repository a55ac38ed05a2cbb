//! Full decodes with the `image` crate (PNG, JPEG, WebP, GIF, BMP), refusing
//! decompression bombs before any pixel buffer is allocated.
//!
//! Memory of one decode: the pixel buffer (at most `max_pixels` × 4 bytes;
//! anything needing more is refused), plus, for JPEG, a copy of the file's
//! bytes (the decoder works on a slice; files larger than
//! `max_pixels` × 4 + 1 MiB are refused), plus the decoder's own tables.
//! One image is decoded at a time by the calling thread.

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Seek};
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
    decode_reader(Cursor::new(bytes), format, bytes.len() as u64, max_pixels)
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
    decode_reader(reader, format, len, max_pixels)
}

/// Decodes from a reader of a known format; `len` is the encoded size.
pub fn decode_reader<R: BufRead + Seek>(
    r: R,
    format: ImageFormat,
    len: u64,
    max_pixels: u64,
) -> Result<(u32, u32), DecodeError> {
    let max_bytes = max_pixels.saturating_mul(BYTES_PER_PIXEL_CAP);
    if format == ImageFormat::Jpeg && len > max_bytes + (1 << 20) {
        return Err(DecodeError::TooManyPixels {
            what: format!(
                "the JPEG file is {len} bytes, more than a JPEG within the pixel cap can need"
            ),
            max_pixels,
        });
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
