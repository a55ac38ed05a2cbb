//! Integration tests of the `shardprep` binary: real processes, real gRPC,
//! real files. One test binary (topical modules) keeps link time low.

mod util;

/// A small HTTP/1.1 server on 127.0.0.1 (Range, redirects, faults), shared with the remote crate's tests.
#[path = "../crates/remote/tests/common/server.rs"]
mod server;

mod core;
mod faults;
mod fencing;
mod hostile;
mod index_mode;
mod integrity;
mod page;
mod remote;
mod repair;
mod security;
mod training;
mod usage;
