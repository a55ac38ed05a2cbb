//! What a job makes of its shards (`--mode`) and what it writes ([`JobOutput`]).

use crate::index_format::IndexFormats;

/// The job's mode: extract the members, or index the tars in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Extract members into `OUT/data/` (today's behaviour).
    #[default]
    Extract,
    /// Extract nothing: one webshart index per shard under `OUT/index/`.
    Index,
}

impl Mode {
    /// The name used on the command line and in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Extract => "extract",
            Mode::Index => "index",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "extract" => Ok(Mode::Extract),
            "index" => Ok(Mode::Index),
            other => Err(format!("unknown mode {other:?}: use extract or index")),
        }
    }
}

/// What a job writes (`--mode`, `--no-extract`, `--captions`,
/// `--index-format`), as one value: a caption file in index mode or an
/// index format in extract mode cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutput {
    /// Into `OUT/data/`: the members unless `--no-extract` (`members`), and
    /// `data/<stem>.txt` captions with `--captions textfile` (`captions`).
    Extract { members: bool, captions: bool },
    /// Nothing into `data/`: the indexes of `formats` over the tars in place.
    Index { formats: IndexFormats },
}

impl Default for JobOutput {
    /// The seed's output: every member and a caption file per sample.
    fn default() -> Self {
        JobOutput::Extract {
            members: true,
            captions: true,
        }
    }
}

impl JobOutput {
    /// Index mode writing `formats`.
    pub fn index(formats: IndexFormats) -> Self {
        JobOutput::Index { formats }
    }

    pub fn mode(&self) -> Mode {
        match self {
            JobOutput::Extract { .. } => Mode::Extract,
            JobOutput::Index { .. } => Mode::Index,
        }
    }

    /// Members are extracted into `data/`.
    pub fn writes_members(&self) -> bool {
        matches!(self, JobOutput::Extract { members: true, .. })
    }

    /// `data/<stem>.txt` caption files are written.
    pub fn writes_captions(&self) -> bool {
        matches!(self, JobOutput::Extract { captions: true, .. })
    }

    /// Anything at all goes into `data/`.
    pub fn writes_data(&self) -> bool {
        self.writes_members() || self.writes_captions()
    }

    /// Index mode's formats; `None` in extract mode.
    pub fn index_formats(&self) -> Option<&IndexFormats> {
        match self {
            JobOutput::Index { formats } => Some(formats),
            JobOutput::Extract { .. } => None,
        }
    }

    /// Whether `format` is written (never in extract mode).
    pub fn writes_index(&self, format: crate::index_format::IndexFormat) -> bool {
        self.index_formats().is_some_and(|f| f.contains(format))
    }

    /// Index mode with any format other than webshart (energon, DALI, wids).
    pub fn writes_other_formats(&self) -> bool {
        self.index_formats()
            .is_some_and(IndexFormats::has_other_than_webshart)
    }
}
