#!/usr/bin/env bash
# Costs of the image integrity checks on one core (crates/worker/src/integrity):
# header dims per image, md5/sha256/sha512 MB/s, full decodes of ~1 MiB JPEG/PNG.
set -euo pipefail
cd "$(dirname "$0")/.."
taskset -c 0 cargo test --release -p shardprep-worker --test integrity \
  bench_integrity_costs -- --ignored --nocapture --test-threads 1 2>&1 |
  grep -oE '(header|hash|decode) .*'
