//! What the pass is asked to do: the leased shard located (never outside
//! the input) and the [`ShardTask`] built from the job spec and the lease.

use std::path::{Component, Path, PathBuf};

use shardprep_core::durability::DataSync;
use shardprep_core::fields::FieldMap;
use shardprep_core::layout::OutputLayout;
use shardprep_core::manifest::ShardIdentity;
use shardprep_core::mode::JobOutput;
use shardprep_core::proto;

use super::lease::Lease;
use super::rpc::Ctx;
use crate::shard::ShardTask;

/// Where the leased shard is read from.
pub(super) struct Located {
    /// The local file, or the URL's redacted form (for messages).
    pub(super) path: PathBuf,
    /// The URL of a remote shard.
    pub(super) url: Option<String>,
}

/// Resolves a shard name from the coordinator inside the input root,
/// refusing anything that would leave it.
pub fn resolve_shard(input_root: &Path, name: &str) -> Result<PathBuf, String> {
    let rel = Path::new(name);
    let plain = !name.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(format!(
            "refusing shard {name:?}: not a relative name inside the input folder"
        ));
    }
    let root = input_root
        .canonicalize()
        .map_err(|e| format!("cannot open the input folder {}: {e}", input_root.display()))?;
    let path = root.join(rel);
    // The folders on the way must stay inside the input folder; the shard
    // itself may be a symlink the user made (e.g. into a download cache),
    // as long as it is a regular file.
    if let Some(parent) = path.parent() {
        let real_parent = parent
            .canonicalize()
            .map_err(|e| format!("cannot open shard {}: {e}", path.display()))?;
        if !real_parent.starts_with(&root) {
            return Err(format!(
                "refusing shard {name:?}: it resolves outside the input folder"
            ));
        }
    }
    let meta = std::fs::metadata(&path)
        .map_err(|e| format!("cannot open shard {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("refusing shard {name:?}: not a regular file"));
    }
    Ok(path)
}

/// Where to read the leased shard: a local path inside the input folder, or
/// a URL under the input location (with its redacted form as the path).
pub(super) fn locate(spec: &proto::JobSpec, l: &proto::ShardLease) -> Result<Located, String> {
    if l.url.is_empty() {
        let path = resolve_shard(Path::new(&spec.input_root), &l.shard_name)?;
        return Ok(Located { path, url: None });
    }
    if !shardprep_remote::is_under(&spec.input_root, &l.url) {
        return Err(format!(
            "refusing shard URL {}: it is not under the input location {}",
            shardprep_remote::redact(&l.url),
            shardprep_remote::redact(&spec.input_root)
        ));
    }
    Ok(Located {
        path: PathBuf::from(shardprep_remote::redact(&l.url)),
        url: Some(l.url.clone()),
    })
}

/// The pass's task for the shard `lease` holds, its files behind the
/// lease's fence.
pub(super) fn shard_task(
    ctx: &Ctx,
    spec: &proto::JobSpec,
    lease: &Lease,
    located: &Located,
    outputs: JobOutput,
) -> ShardTask {
    let l = &lease.grant;
    let layout = OutputLayout::new(&spec.output_root);
    let path = &located.path;
    let shards_in_data_dir = located.url.is_none()
        && match (path.parent(), layout.data_dir().canonicalize()) {
            (Some(parent), Ok(data)) => parent == data,
            _ => false,
        };
    let config = &ctx.config;
    ShardTask {
        data_sync: DataSync::from_proto(spec.data_sync),
        writeback: ctx.writeback.clone(),
        shards_in_data_dir,
        shard_path: path.clone(),
        shard_name: l.shard_name.clone(),
        identity: ShardIdentity::from(l),
        layout,
        fields: FieldMap::from_proto(spec),
        outputs,
        lease_id: l.lease_id,
        attempt: l.attempt,
        worker_id: config.worker_id.clone(),
        write_threads: config.write_threads,
        integrity: crate::integrity::IntegrityConfig::from_spec(spec),
        fence: lease.fence.clone(),
        max_sparse_size: spec
            .max_sparse_size
            .unwrap_or(shardprep_core::size::DEFAULT_MAX_SPARSE_SIZE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_must_stay_inside_the_input() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        std::fs::create_dir_all(input.join("sub")).unwrap();
        std::fs::write(input.join("ok.tar"), b"x").unwrap();
        std::fs::write(tmp.path().join("secret"), b"x").unwrap();
        std::fs::write(tmp.path().join("elsewhere.tar"), b"x").unwrap();
        // A symlinked shard (the user's own link, e.g. into a download cache) is fine.
        std::os::unix::fs::symlink(tmp.path().join("elsewhere.tar"), input.join("link.tar"))
            .unwrap();
        // A symlinked folder leading out of the input is not.
        std::os::unix::fs::symlink(tmp.path(), input.join("up")).unwrap();
        std::os::unix::fs::symlink("/dev/null", input.join("dev.tar")).unwrap();
        assert!(resolve_shard(&input, "ok.tar").is_ok());
        assert!(resolve_shard(&input, "link.tar").is_ok());
        for bad in [
            "../secret",
            "/etc/shadow",
            "a/../../secret",
            "",
            "up/secret",
            "dev.tar",
            "sub",
        ] {
            assert!(resolve_shard(&input, bad).is_err(), "{bad:?} was accepted");
        }
    }
}
