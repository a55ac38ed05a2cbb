//! [`Attempt`]: one attempt's temporary files in `OUT/.shardprep/tmp/` (its
//! fragment, files list, index and manifest, named by
//! [`AttemptFiles`]) and the manifest that ends it.

use std::io;
use std::path::{Path, PathBuf};

use shardprep_core::layout::AttemptFiles;
use shardprep_core::manifest::ShardManifest;

use super::input::ShardSource;
use super::{ShardError, ShardOutput, ShardTask, write_synced};

/// The temporary files of one attempt at one shard.
pub(crate) struct Attempt {
    dir: PathBuf,
    lease_id: u64,
    names: AttemptFiles,
}

impl Attempt {
    /// The attempt of `task` (its shard under its lease); creates `tmp/`.
    pub(crate) fn create(task: &ShardTask, source: &ShardSource) -> Result<Self, ShardError> {
        let dir = task.layout.tmp_dir();
        std::fs::create_dir_all(&dir).map_err(|e| source.write_error(&dir, e))?;
        Ok(Attempt {
            dir,
            lease_id: task.lease_id,
            names: AttemptFiles::new(&task.shard_name, task.lease_id),
        })
    }

    /// `tmp/` itself.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lease the attempt runs under (it names the attempt's files).
    pub(crate) fn lease_id(&self) -> u64 {
        self.lease_id
    }

    pub(crate) fn fragment(&self) -> PathBuf {
        self.dir.join(&self.names.fragment)
    }

    pub(crate) fn files_list(&self) -> PathBuf {
        self.dir.join(&self.names.files)
    }

    /// Writes (and syncs) the shard's webshart index.
    pub(crate) fn write_index(&self, bytes: &[u8], source: &ShardSource) -> Result<(), ShardError> {
        let path = self.dir.join(&self.names.index);
        write_synced(&path, bytes).map_err(|e| source.write_error(&path, e))
    }

    /// Writes (and syncs) the manifest, the attempt's last file: the
    /// attempt is then ready for the commit.
    pub(crate) fn finish(
        self,
        manifest: ShardManifest,
        source: &ShardSource,
    ) -> Result<ShardOutput, ShardError> {
        let path = self.dir.join(&self.names.manifest);
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| {
            let why = format!("cannot serialise the manifest: {e}");
            source.write_error(&path, io::Error::new(io::ErrorKind::InvalidData, why))
        })?;
        write_synced(&path, &bytes).map_err(|e| source.write_error(&path, e))?;
        Ok(ShardOutput {
            fragment_tmp: self.names.fragment,
            manifest_tmp: self.names.manifest,
            manifest,
        })
    }
}
