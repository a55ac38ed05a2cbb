//! What a job makes of its shards (`--mode`).

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
