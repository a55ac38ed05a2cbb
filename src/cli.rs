//! Command-line interface: every flag has a matching `SHARDPREP_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use shardprep_core::durability::DataSync;

fn duration(s: &str) -> Result<Duration, String> {
    shardprep_core::duration::parse_duration(s).map_err(|e| e.to_string())
}

fn bytes(s: &str) -> Result<u64, String> {
    shardprep_core::size::parse_bytes(s)
}

/// Turn webdataset tar shards (image + JSON per sample) into a training-ready
/// SimpleTuner dataset: extracted files, caption .txt files, one parquet table,
/// a report and the dataloader entry — in one streaming pass per shard.
#[derive(Debug, Parser)]
#[command(name = "shardprep", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr (levels via RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, global = true, env = "SHARDPREP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Prepare a dataset on this machine: a coordinator plus N worker processes.
    Run(RunArgs),
    /// Serve a job to workers on other machines (gRPC), then merge and verify.
    Coordinator(CoordinatorArgs),
    /// Process shards for a coordinator until its job is done.
    Worker(WorkerArgs),
    /// Show the state of a running job.
    Status(StatusArgs),
    /// Check an existing output folder without a coordinator.
    Verify(VerifyArgs),
    /// Write deterministic DALLE-3-style sample shards (for demos, tests, benchmarks).
    Generate(GenerateArgs),
    /// Write OUT/report.html (the report as a page, with the trainer's aspect buckets) from
    /// OUT/report.json; a job writes it at its end too.
    Report(ReportArgs),
}

/// Settings of a job, shared by `run` and `coordinator`.
#[derive(Debug, Args, Clone)]
pub struct JobArgs {
    /// On a re-run, also compare the checksum of every file earlier shards
    /// wrote (reads them all; without it only sizes are checked), so that
    /// changed bytes are repaired too.
    #[arg(long, env = "SHARDPREP_DEEP")]
    pub deep: bool,
    /// Where the *.tar shards are: a folder (e.g. the Hugging Face download's data/),
    /// s3://BUCKET/PREFIX/ (also gs://, az://), https://HOST/data-{000000..000068}.tar,
    /// or hf://datasets/OWNER/NAME[/PATH].
    #[arg(
        long,
        env = "SHARDPREP_INPUT",
        required_unless_present = "input_list",
        conflicts_with = "input_list"
    )]
    pub input: Option<String>,
    /// A file naming the shards, one URL or path per line (instead of --input).
    #[arg(long, env = "SHARDPREP_INPUT_LIST")]
    pub input_list: Option<PathBuf>,
    /// Output folder (the seed's dalle3/): data/, <dataset-id>.parquet, report.json, multidatabackend.json.
    #[arg(long, env = "SHARDPREP_OUTPUT")]
    pub output: PathBuf,
    /// Fail unless the shards hold exactly this many *.json files (full DALLE-3 set: 1161957).
    #[arg(long, env = "SHARDPREP_EXPECT_JSON")]
    pub expect_json: Option<u64>,
    /// Field preset: dalle3 = short_caption, width, height, image_name.
    #[arg(long, env = "SHARDPREP_PRESET", default_value = "dalle3")]
    pub preset: String,
    /// JSON field holding the caption (a list takes its first non-empty string).
    #[arg(long, env = "SHARDPREP_CAPTION_FIELD")]
    pub caption_field: Option<String>,
    /// JSON field holding the width (JSONs without it are not samples, as in the seed).
    #[arg(long, env = "SHARDPREP_WIDTH_FIELD")]
    pub width_field: Option<String>,
    /// JSON field holding the height.
    #[arg(long, env = "SHARDPREP_HEIGHT_FIELD")]
    pub height_field: Option<String>,
    /// JSON field holding the image's file name.
    #[arg(long, env = "SHARDPREP_FILENAME_FIELD")]
    pub filename_field: Option<String>,
    /// More JSON fields to keep as parquet columns (comma-separated), e.g. long_caption,short_caption2.
    #[arg(long, env = "SHARDPREP_EXTRA_COLUMNS", value_delimiter = ',')]
    pub extra_columns: Vec<String>,
    /// Where captions go: textfile writes data/<stem>.txt; parquet writes none (saves inodes).
    #[arg(long, env = "SHARDPREP_CAPTIONS", value_enum, default_value_t = Captions::Textfile)]
    pub captions: Captions,
    /// Do not write images and JSON into data/ (only the table and the report).
    #[arg(long, env = "SHARDPREP_NO_EXTRACT")]
    pub no_extract: bool,
    /// extract: members into OUT/data/ (and captions). index: extract nothing; write one
    /// webshart index per shard into OUT/index/ (SimpleTuner `type: webshart` trains from
    /// the tars in place); local shards in one --input folder only.
    #[arg(long, env = "SHARDPREP_MODE", value_enum, default_value_t = ModeArg::Extract)]
    pub mode: ModeArg,
    /// With --mode index: the trainers' indexes to write, any of webshart (OUT/index/,
    /// the default), energon (OUT/energon/: Megatron-Energon's dataset root), dali
    /// (OUT/dali/: DALI's index_paths), wids (OUT/wids/wids.json), comma-separated.
    /// energon, dali and wids need a local --input folder.
    #[arg(long, env = "SHARDPREP_INDEX_FORMAT")]
    pub index_format: Option<shardprep_core::index_format::IndexFormats>,
    /// Where the table's width/height come from: json (the seed's rows) or image (its header).
    /// Either way, images whose header disagrees with their JSON are counted as dims_mismatch.
    #[arg(long, env = "SHARDPREP_DIMS", default_value = "json", value_parser = ["json", "image"])]
    pub dims: String,
    /// decode: decode every image fully on the workers and report those that fail.
    #[arg(long, env = "SHARDPREP_CHECK_IMAGES", default_value = "none", value_parser = ["none", "decode"])]
    pub check_images: String,
    /// What to do with the row of a bad image (bad header, failed decode, wrong hash):
    /// keep (the seed's rows) or skip (leave the row and its caption out; counted as bad_image).
    #[arg(long, env = "SHARDPREP_ON_BAD_IMAGE", default_value = "keep", value_parser = ["keep", "skip"])]
    pub on_bad_image: String,
    /// Verify each image's bytes against the hash fields of the preset (dalle3:
    /// md5_file_hash=md5, sha512_hash=sha512), plus any --hash-field.
    #[arg(long, env = "SHARDPREP_CHECK_HASHES")]
    pub check_hashes: bool,
    /// A JSON field holding a digest of the image file, NAME=md5|sha256|sha512 (repeatable).
    #[arg(
        long = "hash-field",
        env = "SHARDPREP_HASH_FIELDS",
        value_delimiter = ','
    )]
    pub hash_fields: Vec<String>,
    /// With --check-images decode: refuse to decode an image whose header claims more
    /// pixels than this (recorded as too_many_pixels; decompression bombs exist).
    #[arg(long, env = "SHARDPREP_MAX_PIXELS")]
    pub max_pixels: Option<u64>,
    /// Dataset id: the parquet's name and the SimpleTuner entry's id.
    #[arg(long, env = "SHARDPREP_DATASET_ID", default_value = "dalle3")]
    pub dataset_id: String,
    /// Where the trainer mounts OUT: rebases instance_data_dir, parquet.path and cache_dir_vae
    /// in multidatabackend.json together (the per-path flags still override). A relative
    /// path is made absolute against the current directory.
    #[arg(long, env = "SHARDPREP_TRAINER_ROOT")]
    pub trainer_root: Option<PathBuf>,
    /// data/ as the trainer will see it (default: TRAINER_ROOT/data, else absolute OUT/data).
    /// A relative path is made absolute against the current directory.
    #[arg(long, env = "SHARDPREP_INSTANCE_DATA_DIR")]
    pub instance_data_dir: Option<PathBuf>,
    /// The parquet's path as the trainer will see it (default: TRAINER_ROOT/<dataset-id>.parquet,
    /// else absolute OUT/<dataset-id>.parquet). A relative path is made absolute against the
    /// current directory.
    #[arg(long, env = "SHARDPREP_TRAINER_PARQUET_PATH")]
    pub trainer_parquet_path: Option<PathBuf>,
    /// SimpleTuner cache_dir_vae (default: TRAINER_ROOT/cache/vae/<dataset-id>/, else absolute
    /// OUT/cache/vae/<dataset-id>/). A relative path is made absolute against the current directory.
    #[arg(long, env = "SHARDPREP_CACHE_DIR_VAE")]
    pub cache_dir_vae: Option<PathBuf>,
    /// SimpleTuner resolution.
    #[arg(long, env = "SHARDPREP_RESOLUTION", default_value_t = 1.0)]
    pub resolution: f64,
    /// SimpleTuner resolution_type.
    #[arg(long, env = "SHARDPREP_RESOLUTION_TYPE", default_value = "area")]
    pub resolution_type: String,
    /// SimpleTuner maximum_image_size.
    #[arg(long, env = "SHARDPREP_MAXIMUM_IMAGE_SIZE", default_value_t = 2.0)]
    pub maximum_image_size: f64,
    /// SimpleTuner minimum_image_size.
    #[arg(long, env = "SHARDPREP_MINIMUM_IMAGE_SIZE", default_value_t = 0.75)]
    pub minimum_image_size: f64,
    /// SimpleTuner target_downsample_size.
    #[arg(long, env = "SHARDPREP_TARGET_DOWNSAMPLE_SIZE", default_value_t = 1.75)]
    pub target_downsample_size: f64,
    /// A worker silent this long loses its shard to another worker.
    #[arg(long, env = "SHARDPREP_LEASE_TIMEOUT", value_parser = duration, default_value = "30s")]
    pub lease_timeout: Duration,
    /// How often workers report progress and renew their lease.
    #[arg(long, env = "SHARDPREP_HEARTBEAT_INTERVAL", value_parser = duration, default_value = "1s")]
    pub heartbeat_interval: Duration,
    /// A shard whose worker reports no progress for this long is given to another worker.
    #[arg(long, env = "SHARDPREP_STALL_TIMEOUT", value_parser = duration, default_value = "5m")]
    pub stall_timeout: Duration,
    /// Sparse members (GNU tar --sparse) whose expanded size passes this are
    /// refused and listed in the report; the others are written as sparse
    /// files (holes take no disk). Bytes, or e.g. 64G, 2TiB.
    #[arg(long, env = "SHARDPREP_MAX_SPARSE_SIZE", value_name = "BYTES", value_parser = bytes, default_value = "1TiB")]
    pub max_sparse_size: u64,
    /// Attempts per shard before it is marked failed.
    #[arg(long, env = "SHARDPREP_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// At the end, how long to wait for workers to hear that the job is done.
    #[arg(long, env = "SHARDPREP_WORKER_GRACE", value_parser = duration, default_value = "10s")]
    pub worker_grace: Duration,
    /// When the files extracted into data/ are flushed to disk (workers
    /// start writing them back as they extract in every mode). `none`: never
    /// waited for; the kernel finishes (within ~30 s), like `tar xf`: fastest; a
    /// process crash loses nothing, and after a power loss a re-run finds the
    /// committed shards whose files did not survive (boot id + file sizes) and
    /// redoes them. `end`: flushed once before the verified report (on disk
    /// when the job exits). `shard`: flushed before each shard's commit.
    /// Fragments, the parquet and the report are always fsynced.
    /// [default: none for `run`, shard for `coordinator` (workers on other
    /// machines may restart unseen)]
    #[arg(long, env = "SHARDPREP_DATA_SYNC", value_enum)]
    pub data_sync: Option<DataSyncArg>,
    /// Same as --data-sync end (kept for scripts).
    #[arg(
        long,
        env = "SHARDPREP_NO_SYNC_PER_SHARD",
        conflicts_with = "data_sync"
    )]
    pub no_sync_per_shard: bool,
    /// How often the coordinator logs a progress line.
    #[arg(long, env = "SHARDPREP_PROGRESS_INTERVAL", value_parser = duration, default_value = "5s")]
    pub progress_interval: Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics and the live report page at http://ADDR/
    /// (no token), e.g. 127.0.0.1:9090, or 0.0.0.0:9090 for a Prometheus on another machine.
    /// Off unless given.
    #[arg(long, env = "SHARDPREP_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

/// `--mode` values (see `shardprep_core::mode::Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Extract the members into data/.
    Extract,
    /// Write a webshart index per shard; extract nothing.
    Index,
}

impl From<ModeArg> for shardprep_core::mode::Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Extract => shardprep_core::mode::Mode::Extract,
            ModeArg::Index => shardprep_core::mode::Mode::Index,
        }
    }
}

/// `--data-sync` values (see `shardprep_core::durability::DataSync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DataSyncArg {
    /// Before each shard's commit.
    Shard,
    /// Once, before the verified report.
    End,
    /// Never waited for: the kernel finishes the writeback, like `tar xf`.
    None,
}

impl JobArgs {
    /// The flush policy the flags ask for, or `default`.
    pub fn data_sync(&self, default: DataSync) -> DataSync {
        match (self.data_sync, self.no_sync_per_shard) {
            (Some(DataSyncArg::Shard), _) => DataSync::Shard,
            (Some(DataSyncArg::End), _) | (None, true) => DataSync::End,
            (Some(DataSyncArg::None), _) => DataSync::None,
            (None, false) => default,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Captions {
    /// data/<image stem>.txt next to each image (SimpleTuner caption_strategy textfile).
    Textfile,
    /// Captions only in the parquet (caption_strategy parquet).
    Parquet,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Worker processes to start (default: number of CPUs).
    #[arg(long, env = "SHARDPREP_WORKERS")]
    pub workers: Option<usize>,
    /// Threads per worker that create small files while the tar is read
    /// (0: the reading thread writes each file itself). Default: the CPUs
    /// divided among the workers, 1 to 4.
    #[arg(long, env = "SHARDPREP_WRITE_THREADS")]
    pub write_threads: Option<usize>,
    /// Test hook passed to worker number 0 (see `worker --fault`).
    #[arg(long, env = "SHARDPREP_FAULT_WORKER0", hide = true)]
    pub fault_worker0: Option<String>,
    /// Live progress display: auto (when stderr is a terminal), always or never.
    #[arg(long, env = "SHARDPREP_PROGRESS", value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// File whose first line is the shared secret (or set SHARDPREP_TOKEN to the secret itself).
    #[arg(long, env = "SHARDPREP_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// TLS for clients (`worker`, `status`): use an `https://` coordinator URL.
#[derive(Debug, Args)]
pub struct ClientTlsArgs {
    /// Trust this CA or self-signed certificate (PEM) for the coordinator's TLS.
    #[arg(long, env = "SHARDPREP_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Name to expect in the coordinator's certificate (default: the URL's host).
    #[arg(long, env = "SHARDPREP_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
}

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Address to serve gRPC on; 127.0.0.1 by default (use 0.0.0.0:50051 to accept other machines).
    #[arg(long, env = "SHARDPREP_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,
    #[command(flatten)]
    pub token: TokenArgs,
    /// Serve gRPC over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "SHARDPREP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "SHARDPREP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The coordinator's URL, e.g. http://coordinator-host:50051.
    #[arg(long, env = "SHARDPREP_COORDINATOR")]
    pub coordinator: String,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// This worker's id in logs and status (default: host-pid-random).
    #[arg(long, env = "SHARDPREP_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Keep retrying an unreachable coordinator this long before giving up.
    #[arg(long, env = "SHARDPREP_CONNECT_TIMEOUT", value_parser = duration, default_value = "10m")]
    pub connect_timeout: Duration,
    /// Threads that create small files while the tar is read (0: the
    /// reading thread writes each file itself). Default: the CPUs, 1 to 4.
    #[arg(long, env = "SHARDPREP_WRITE_THREADS")]
    pub write_threads: Option<usize>,
    /// Test hook: fail:SHARD, stall:SHARD:DURATION or hang:SHARD.
    #[arg(long, env = "SHARDPREP_FAULT", hide = true)]
    pub fault: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The coordinator's URL, e.g. http://127.0.0.1:50051.
    #[arg(long, env = "SHARDPREP_COORDINATOR")]
    pub coordinator: String,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Print the raw state as JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The output folder of a job.
    pub output: PathBuf,
    /// The number of *.json files data/ must hold.
    #[arg(long, env = "SHARDPREP_EXPECT_JSON")]
    pub expect_json: Option<u64>,
    /// The dataset id (parquet name); default: read from report.json, else dalle3.
    #[arg(long, env = "SHARDPREP_DATASET_ID")]
    pub dataset_id: Option<String>,
    /// Also read every file the shards wrote and compare its checksum, and re-check every
    /// image a JSON of data/ names: its header size against the JSON, and the full decode and
    /// hash fields when the job's report says they were checked.
    #[arg(long)]
    pub deep: bool,
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The output folder of a job (it holds report.json).
    pub output: PathBuf,
    /// The model family's aspect bucket alignment in pixels (SimpleTuner's
    /// --aspect_bucket_alignment; it sets 64 for SDXL, SD3, Sana and HiDream).
    #[arg(long, env = "SHARDPREP_BUCKET_ALIGNMENT", default_value_t = 64)]
    pub bucket_alignment: u32,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Folder to write data-000000.tar, data-000001.tar, ... into.
    #[arg(long)]
    pub output: PathBuf,
    /// Number of shards.
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// Samples per shard.
    #[arg(long, default_value_t = 20)]
    pub samples: usize,
    /// Smallest bytes per image: the real PNG/JPEG files (0.3-11 KB) are padded up to it
    /// with random bytes in a private PNG chunk / JPEG comments (they still decode).
    #[arg(long, default_value_t = 1024)]
    pub image_bytes: usize,
    /// Seed of the generator: same seed, same bytes.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Every n-th JSON lacks width (0: none).
    #[arg(long, default_value_t = 9)]
    pub no_width_every: usize,
    /// Every n-th JSON lies about the image's size: width + 128, height + 64 (0: none).
    #[arg(long, default_value_t = 0)]
    pub lying_dims_every: usize,
    /// Every n-th image is cut in the middle of its pixel data (0: none).
    #[arg(long, default_value_t = 0)]
    pub truncated_every: usize,
    /// Every n-th JSON's md5_file_hash/sha512_hash do not match its image (0: none).
    #[arg(long, default_value_t = 0)]
    pub wrong_hash_every: usize,
}
