//! Integration tests of the `shardprep` binary: real processes, real gRPC,
//! real files. One test binary (topical modules) keeps link time low.

mod util;

mod core;
mod faults;
mod fencing;
mod hostile;
mod index_mode;
mod integrity;
mod remote;
mod security;
mod training;
mod usage;
