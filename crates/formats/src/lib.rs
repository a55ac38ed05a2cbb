//! The indexes other trainers' webdataset readers need, built from index
//! mode's walk of each shard (`--index-format energon,dali,wids`; webshart's
//! own index stays in the worker).
//!
//! Layout:
//! - [`input`]: the neutral per-shard input (members in tar order, which images have a row).
//! - [`group`]: samples as the readers group members, and which the job keeps.
//! - [`energon`], [`dali`], [`wids`]: each format's bytes (energon's `index.sqlite`
//!   written in SQLite's file format by [`energon_sqlite`] over `sqlite_file`,
//!   its keys kept by `energon_keys`).
//! - [`paths`]: where each output lives under `OUT/`.
//! - [`shard`]: per-shard pieces: written by the worker, committed with the shard.
//! - [`dataset`]: dataset-wide pieces, rebuilt by the coordinator from the committed ones.
//! - [`verify`]: checks of every format written against the tars.
//!
//! Every format lists the same samples (those with a parquet row) except
//! wids, which has no per-sample index and yields every sample it finds.

pub mod dali;
pub mod dataset;
pub mod energon;
mod energon_keys;
pub mod energon_sqlite;
pub mod group;
pub mod input;
mod packed;
pub mod paths;
pub mod shard;
mod sqlite_file;
pub mod verify;
pub mod wids;

pub use dataset::{
    DatasetNames, DatasetSummary, EarlyEnergon, EarlyShard, FormatsReport, build_dataset,
    dataset_files, remove_unasked,
};
pub use input::{MemberKind, ShardInput, TarMember};
pub use shard::{
    PreparedPieces, ShardPiece, commit_shard, discard_attempt, missing_piece, prepare_shard,
    remove_shard, write_attempt,
};
pub use verify::{check_dataset, check_shard};

/// What can go wrong writing or reading the formats' files.
#[derive(Debug, thiserror::Error)]
pub enum FormatsError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Bad(String),
}

impl FormatsError {
    pub(crate) fn io(
        what: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.display().to_string();
        move |source| FormatsError::Io { what, path, source }
    }
}
