//! Flags → library configs: the job's field map, image checks and
//! coordinator config, the token, a worker id and client TLS.

use anyhow::{Context, bail};
use shardprep_coordinator::{BackendSettings, CoordinatorConfig};
use shardprep_core::auth;
use shardprep_core::durability::DataSync;
use shardprep_core::fields::{FieldMap, PRESETS};
use shardprep_core::mode::{JobOutput, Mode};
use shardprep_worker::integrity::IntegrityConfig;

use crate::cli::{Captions, ClientTlsArgs, JobArgs, TokenArgs};

/// The job's field map: the preset, then any field flags on top.
pub fn fields(job: &JobArgs) -> anyhow::Result<FieldMap> {
    let Some(mut f) = FieldMap::preset(&job.preset) else {
        bail!(
            "unknown preset {:?}; known presets: {}",
            job.preset,
            PRESETS.join(", ")
        );
    };
    if let Some(v) = &job.caption_field {
        f.caption = v.clone();
    }
    if let Some(v) = &job.width_field {
        f.width = v.clone();
    }
    if let Some(v) = &job.height_field {
        f.height = v.clone();
    }
    if let Some(v) = &job.filename_field {
        f.filename = v.clone();
    }
    f.extra = job
        .extra_columns
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for name in &f.extra {
        if ["width", "height", "caption", "filename"].contains(&name.as_str()) {
            bail!("--extra-columns {name:?} clashes with a base column name; pick other fields");
        }
        if name == shardprep_core::table::JSON_KEY_COLUMN {
            bail!(
                "--extra-columns {name:?} is the name of shardprep's own fragment column; pick other fields"
            );
        }
    }
    Ok(f)
}

/// A coordinator config from the job flags.
///
/// `data_sync` is the flush policy when the flags give none.
pub fn coordinator_config(
    job: &JobArgs,
    token: String,
    data_sync: DataSync,
) -> anyhow::Result<CoordinatorConfig> {
    if job.dataset_id.is_empty() || job.dataset_id.contains('/') {
        bail!(
            "--dataset-id {:?} must be a plain name (it names OUT/<id>.parquet)",
            job.dataset_id
        );
    }
    if job.heartbeat_interval >= job.lease_timeout {
        bail!(
            "--heartbeat-interval ({:?}) must be shorter than --lease-timeout ({:?})",
            job.heartbeat_interval,
            job.lease_timeout
        );
    }
    // SimpleTuner matches image paths by string: every path it gets is absolute.
    let absolute = |p: &Option<std::path::PathBuf>| -> anyhow::Result<_> {
        p.as_deref()
            .map(|p| {
                std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()))
            })
            .transpose()
    };
    let mut backend = BackendSettings::seed(&job.dataset_id);
    backend.trainer_root = absolute(&job.trainer_root)?;
    backend.instance_data_dir = absolute(&job.instance_data_dir)?;
    backend.parquet_path = absolute(&job.trainer_parquet_path)?;
    backend.cache_dir_vae = absolute(&job.cache_dir_vae)?;
    backend.resolution = job.resolution;
    backend.resolution_type = job.resolution_type.clone();
    backend.maximum_image_size = job.maximum_image_size;
    backend.minimum_image_size = job.minimum_image_size;
    backend.target_downsample_size = job.target_downsample_size;
    let input = match (&job.input, &job.input_list) {
        (_, Some(list)) => shardprep_coordinator::InputSpec::List(list.clone()),
        (Some(input), None) => shardprep_coordinator::InputSpec::parse(input),
        (None, None) => bail!("give the shards with --input or --input-list"),
    };
    let outputs = job_output(job)?;
    let (checks, fields) = (image_checks(job)?, fields(job)?);
    let pair_check = crate::deep::PairImageCheck {
        cfg: IntegrityConfig::from_checks(&checks).map_err(anyhow::Error::msg)?,
        fields: fields.clone(),
    };
    let config = CoordinatorConfig {
        input,
        output: job.output.clone(),
        token,
        fields,
        outputs,
        expect_json: job.expect_json,
        backend,
        lease_timeout: job.lease_timeout,
        stall_timeout: job.stall_timeout,
        heartbeat_interval: job.heartbeat_interval,
        max_attempts: job.max_attempts,
        worker_grace: job.worker_grace,
        progress_interval: job.progress_interval,
        data_sync: job.data_sync(data_sync),
        metrics_listen: job.metrics_listen,
        image_checks: checks,
        depth: shardprep_core::depth::CheckDepth::from_deep(job.deep),
        max_sparse_size: job.max_sparse_size,
        ..CoordinatorConfig::default()
    };
    Ok(config.with_pair_check(std::sync::Arc::new(pair_check)))
}

/// What the job writes: index mode writes nothing into `data/` (no
/// members, no caption files), extract mode no index.
fn job_output(job: &JobArgs) -> anyhow::Result<JobOutput> {
    match (Mode::from(job.mode), &job.index_format) {
        (Mode::Index, formats) => Ok(JobOutput::index(formats.clone().unwrap_or_default())),
        (Mode::Extract, Some(f)) => bail!(
            "--index-format {f} needs --mode index: extract mode writes the members, not indexes"
        ),
        (Mode::Extract, None) => Ok(JobOutput::Extract {
            members: !job.no_extract,
            captions: job.captions == Captions::Textfile,
        }),
    }
}

/// The image checks the flags ask for, checked here so that a bad
/// `--hash-field` stops the job before any worker starts.
fn image_checks(job: &JobArgs) -> anyhow::Result<shardprep_core::manifest::ImageChecks> {
    use shardprep_worker::integrity::{HashSpec, IntegrityConfig, preset_hash_fields};
    let mut hashes: Vec<HashSpec> = Vec::new();
    if job.check_hashes {
        hashes = preset_hash_fields(&job.preset).with_context(|| {
            format!(
                "--check-hashes: the preset {:?} names no hash fields; give them with --hash-field NAME=ALGO",
                job.preset
            )
        })?;
    }
    for h in &job.hash_fields {
        let spec: HashSpec = h.parse().map_err(anyhow::Error::msg)?;
        if !hashes.contains(&spec) {
            hashes.push(spec);
        }
    }
    let cfg = IntegrityConfig {
        dims: job.dims.parse().map_err(anyhow::Error::msg)?,
        check_decode: job.check_images == "decode",
        hashes,
        on_bad_image: job.on_bad_image.parse().map_err(anyhow::Error::msg)?,
        max_pixels: job
            .max_pixels
            .unwrap_or(shardprep_worker::integrity::DEFAULT_MAX_PIXELS),
    };
    Ok(cfg.to_checks())
}

/// The token from SHARDPREP_TOKEN or --token-file, if either is given.
pub fn token_from(args: &TokenArgs) -> anyhow::Result<Option<String>> {
    if let Ok(t) = std::env::var("SHARDPREP_TOKEN") {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(Some(t));
        }
    }
    match &args.token_file {
        Some(p) => Ok(Some(auth::read_token_file(p)?)),
        None => Ok(None),
    }
}

/// A default worker id: host-pid-random, unique across restarts in one pod.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "worker".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        auth::random_u64() & 0xffff
    )
}

/// TLS settings of a client from its flags.
pub fn client_tls(args: &ClientTlsArgs) -> anyhow::Result<Option<shardprep_worker::ClientTls>> {
    let Some(ca) = &args.tls_ca else {
        return Ok(None);
    };
    Ok(Some(shardprep_worker::ClientTls {
        ca_pem: std::fs::read(ca)
            .with_context(|| format!("cannot read --tls-ca {}", ca.display()))?,
        domain: args.tls_domain.clone(),
    }))
}
