//! Checks of the images themselves, not only of the JSON count: the size in
//! each image's header against its JSON's `width`/`height`, an optional full
//! decode, and the file digests its JSON carries.
//!
//! Layout:
//! - [`dims`]: sizes from the first bytes (PNG, JPEG, WebP, GIF, BMP).
//! - [`hash`]: digests computed as the bytes pass, JSON hash fields.
//! - [`decode`]: full decodes, decompression bombs refused.
//! - [`check`]: one member's check ([`ImageCheck`]), the config, the verdict.
//! - [`ledger`]: images paired with the JSONs naming them, rows in order,
//!   counts by reason.
//!
//! A shard pass wraps each image member's reader in a [`CheckingReader`]
//! (or calls [`ImageCheck::whole`] on a member it holds whole), gives the
//! facts to a [`Ledger`] with the image's name, gives it each JSON's row
//! with its [`Claims`], and writes the rows it releases.

pub mod check;
pub mod decode;
pub mod dims;
pub mod hash;
pub mod ledger;

pub use check::{
    CheckingReader, Claims, DECODE_HOLD_MAX, DimsSource, HEADER_MAX, ImageCheck, ImageFacts,
    IntegrityConfig, OnBadImage, Problem, Reason, Verdict, judge,
};
pub use decode::{DEFAULT_MAX_PIXELS, DecodeError, decode_check, decode_file};
pub use dims::{DimsError, ImageFormat, image_dims, sniff_format};
pub use hash::{
    Digests, HashAlgo, HashSpec, ImageHasher, dalle3_hash_fields, hash_claims, preset_hash_fields,
};
pub use ledger::{IntegrityTally, Ledger, MAX_WAITING, Resolved};
