//! The shardprep worker: leases shards from the coordinator and streams each
//! tar into `OUT/data/`, caption files and a parquet fragment.
//!
//! Layout:
//! - [`client`]: the gRPC loop (register, lease, heartbeat, complete/fail,
//!   reconnect with backoff, graceful shutdown): `mod.rs` the loop,
//!   `rpc.rs` channel, TLS, token and retries, `task.rs` the shard located
//!   and its task, `pass.rs` the pass's thread, `lease.rs` the lease's
//!   clock, fence and heartbeats, `report.rs` Complete/Fail, `fault.rs`
//!   test faults.
//! - [`shard`]: the walk over one tar shard (blocking): one pass that
//!   decides members, rows and image checks for every output.
//! - [`index`]: `--mode index`, the walk with the webshart index and the
//!   other trainers' indexes (`--index-format`) as outputs.
//! - [`window`]: a tar read at chosen offsets through one small buffer
//!   (index mode; local files and range requests).
//! - [`integrity`]: the checks of the images themselves.
//! - [`tar_reader`]: tar iteration with GNU tar's rules.
//! - [`sample`]: one sample JSON to one table row.
//! - [`fragment`]: rows to a parquet fragment, in batches.
//! - [`extract`]: writing into `data/` without ever leaving it (`DataDir`,
//!   member names, the background flush).
//! - `publish`: one file made visible whole, only while the fence is open.
//! - [`fence`]: whether this attempt may still publish files.
//! - [`writers`]: small files written by a few threads, outcomes in order.

pub mod client;
pub mod extract;
pub mod fence;
pub mod fragment;
pub mod index;
pub mod integrity;
mod publish;
pub mod sample;
pub mod shard;
pub mod tar_reader;
pub mod window;
pub mod writers;

pub use client::{
    ClientTls, Fault, WorkerConfig, WorkerError, WorkerExit, default_write_threads, run,
};
