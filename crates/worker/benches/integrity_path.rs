//! What the always-on image check costs per sample on the default path
//! (sizes from the JSON, bad images kept, no decode, no digests): the
//! calls a shard pass makes for each image and JSON, timed against the same
//! loop without them. Speeds only, no assertions: `cargo bench -p
//! shardprep-worker --bench integrity_path` (bench/INTEGRITY-COST.md).

use std::hint::black_box;
use std::time::{Duration, Instant};

use shardprep_worker::integrity::{Claims, ImageCheck, IntegrityConfig, IntegrityTally, Ledger};

/// Samples per timed loop (one bench shard of the small set).
const SAMPLES: usize = 10_000;
const ROUNDS: usize = 40;

/// A 1 KiB member starting with a PNG header of `w`×`h` pixels.
fn png(w: u32, h: u32) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    b.extend_from_slice(&w.to_be_bytes());
    b.extend_from_slice(&h.to_be_bytes());
    b.resize(1024, 0);
    b
}

/// Which member of a sample the tar holds first.
#[derive(Clone, Copy, Debug)]
enum Order {
    ImageFirst,
    JsonFirst,
}

/// One shard's worth of samples through the checks (`checks: false`: the
/// same loop, the checks left out). One JSON in nine has no width (no row),
/// as in the bench sets.
fn shard(names: &[String], bytes: &[u8], order: Order, checks: bool) -> u64 {
    let cfg = IntegrityConfig::default();
    let mut ledger: Ledger<()> = Ledger::new(cfg.clone());
    let mut tally = IntegrityTally::default();
    let settle = |l: &mut Ledger<()>, t: &mut IntegrityTally| {
        while let Some(done) = l.pop_ready() {
            match done {
                shardprep_worker::integrity::Resolved::Row {
                    image,
                    verdict: Some(v),
                    ..
                } => t.record(&image, &v),
                shardprep_worker::integrity::Resolved::LoneImage { image, verdict } => {
                    t.record(&image, &verdict)
                }
                _ => {}
            }
        }
    };
    let mut sum = 0u64;
    for (i, name) in names.iter().enumerate() {
        let img = black_box(bytes);
        let row = i % 9 != 0;
        let mut step = |image_step: bool, l: &mut Ledger<()>, t: &mut IntegrityTally| {
            if image_step {
                sum += img.len() as u64;
                if checks {
                    let facts = ImageCheck::whole(&cfg, img);
                    l.image(black_box(name), facts);
                    settle(l, t);
                }
            } else if row {
                sum += name.len() as u64;
                if checks {
                    let claims = Claims {
                        width: Some(64),
                        height: Some(64),
                        hashes: Vec::new(),
                    };
                    l.json(black_box(name), claims, ());
                    settle(l, t);
                }
            }
        };
        match order {
            Order::ImageFirst => {
                step(true, &mut ledger, &mut tally);
                step(false, &mut ledger, &mut tally);
            }
            Order::JsonFirst => {
                step(false, &mut ledger, &mut tally);
                step(true, &mut ledger, &mut tally);
            }
        }
    }
    ledger.finish();
    settle(&mut ledger, &mut tally);
    sum + tally.images_checked
}

/// Median time of one shard over the rounds.
fn time(names: &[String], bytes: &[u8], order: Order, checks: bool) -> Duration {
    let mut t: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            black_box(shard(names, bytes, order, checks));
            start.elapsed()
        })
        .collect();
    t.sort();
    t[ROUNDS / 2]
}

fn main() {
    let names: Vec<String> = (0..SAMPLES)
        .map(|i| {
            format!(
                "{:016x}{i:08}.png",
                (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            )
        })
        .collect();
    let bytes = png(64, 64);
    println!("integrity_path: {SAMPLES} samples per shard, median of {ROUNDS} rounds");
    for order in [Order::ImageFirst, Order::JsonFirst] {
        let without = time(&names, &bytes, order, false);
        let with = time(&names, &bytes, order, true);
        let per = |d: Duration| d.as_nanos() as f64 / SAMPLES as f64;
        println!(
            "{order:?}: checks {:.0} ns/sample (loop with {:.0}, without {:.0})",
            per(with) - per(without),
            per(with),
            per(without)
        );
    }
}
