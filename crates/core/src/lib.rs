//! Shared pieces of shardprep: the wire protocol, the on-disk layout of an
//! output directory, and the records that workers and the coordinator exchange.
//!
//! Layout:
//! - [`proto`]: generated tonic/prost code for `proto/shardprep.proto`.
//! - [`layout`]: where everything lives under `OUT/` (data, fragments, report).
//! - [`manifest`]: per-shard counts and the manifest committed with each fragment.
//! - [`auth`]: the shared-secret token (generation, constant-time check).
//! - [`fields`]: which JSON fields feed which parquet columns (presets).
//! - [`index_format`]: the trainers' index formats (`--index-format`; `crates/formats` builds them).
//! - [`issue`]: every kind of problem a pass counts or lists, one key each.
//! - [`table`]: the parquet schema (seed columns + extras) and writer settings.
//! - [`mode`]: extract the members or index the tars in place (`--mode`), and [`mode::JobOutput`]: what a job writes.
//! - [`depth`]: how closely an output is checked (`--deep`).
//! - [`durability`]: when `data/` is flushed, boot ids, per-shard file lists.
//! - [`duration`]: human durations (`500ms`, `30s`, `2m`) for flags.
//! - [`size`]: byte sizes (`64M`, `1TiB`) for flags, the sparse cap's default.
//! - [`wire`]: conversions between wire and domain types, status arithmetic (ETA).

pub mod auth;
pub mod depth;
pub mod durability;
pub mod duration;
pub mod fields;
pub mod index_format;
pub mod issue;
pub mod layout;
pub mod manifest;
pub mod mode;
pub mod size;
pub mod table;
pub mod wire;

/// Generated protocol code (`shardprep.v1`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("shardprep.v1");
}

/// Errors of the shared pieces.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("invalid duration {input:?}: {reason} (use e.g. 500ms, 30s, 2m)")]
    Duration { input: String, reason: String },
    #[error("could not read token file {path}: {source}")]
    TokenFile {
        path: String,
        source: std::io::Error,
    },
    #[error("token file {path} is empty: put the shared secret on its first line")]
    EmptyToken { path: String },
    #[error("could not generate a random token: {0}")]
    Random(String),
}
