//! Helpers for the remote crate's tests: the HTTP test server (`server.rs`), shard bytes,
//! a runtime.
#![allow(dead_code)]

mod server;

#[allow(unused_imports)] // not every test binary uses the server
pub use server::*;

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A webdataset-style tar: `count` samples of `KEY.jpg` (noise of `image_len` bytes) and
/// `KEY.txt`.
pub fn make_tar(count: usize, image_len: usize, seed: u64) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for i in 0..count {
        let key = format!("{seed:03}{i:06}");
        let image = noise(image_len, seed * 1000 + i as u64);
        let caption = format!("caption of sample {key}");
        for (name, body) in [
            (format!("{key}.jpg"), image.as_slice()),
            (format!("{key}.txt"), caption.as_bytes()),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, body).unwrap();
        }
    }
    builder.into_inner().unwrap()
}

/// Entry names of a tar read from `reader`.
pub fn tar_names(reader: impl std::io::Read) -> Vec<String> {
    let mut archive = tar::Archive::new(reader);
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
