//! Conversions between the wire types of [`crate::proto`] and the domain
//! types, and the few computations every reader of a job's status shares.
//! No other module builds a wire message field by field.

use crate::fields::FieldMap;
use crate::index_format::IndexFormats;
use crate::manifest::{ShardCounts, ShardIdentity, ShardProgress};
use crate::mode::{JobOutput, Mode};
use crate::proto::{self, FailureKind};

impl Mode {
    /// To the wire.
    pub fn to_proto(self) -> i32 {
        match self {
            Mode::Extract => proto::Mode::Extract as i32,
            Mode::Index => proto::Mode::Index as i32,
        }
    }
    /// From the wire; `None` for a value this build does not know (a worker
    /// must not guess what a newer coordinator asks of it).
    pub fn from_proto(v: i32) -> Option<Self> {
        match proto::Mode::try_from(v).ok()? {
            proto::Mode::Extract => Some(Mode::Extract),
            proto::Mode::Index => Some(Mode::Index),
        }
    }
}

impl JobOutput {
    /// Sets the job spec's output fields (`mode`, `extract`,
    /// `write_captions`, `index_formats`).
    pub fn to_proto(&self, spec: &mut proto::JobSpec) {
        spec.mode = self.mode().to_proto();
        spec.extract = self.writes_members();
        spec.write_captions = self.writes_captions();
        spec.index_formats = self
            .index_formats()
            .map(IndexFormats::names)
            .unwrap_or_default();
    }

    /// What a job spec asks to write; an error names what this build does
    /// not know (a worker must not guess what a newer coordinator asks).
    pub fn from_proto(spec: &proto::JobSpec) -> Result<Self, String> {
        let unknown = |what: String| {
            format!(
                "the coordinator asks for {what} that this worker does not know: run workers of the coordinator's shardprep version"
            )
        };
        match Mode::from_proto(spec.mode) {
            None => Err(unknown(format!("mode {}", spec.mode))),
            Some(Mode::Extract) => Ok(JobOutput::Extract {
                members: spec.extract,
                captions: spec.write_captions,
            }),
            Some(Mode::Index) => IndexFormats::from_names(&spec.index_formats)
                .map(JobOutput::index)
                .map_err(|e| unknown(format!("index formats ({e})"))),
        }
    }
}

impl FieldMap {
    /// The JSON fields a job spec names.
    pub fn from_proto(spec: &proto::JobSpec) -> Self {
        FieldMap {
            caption: spec.caption_field.clone(),
            width: spec.width_field.clone(),
            height: spec.height_field.clone(),
            filename: spec.filename_field.clone(),
            extra: spec.extra_columns.clone(),
        }
    }
}

impl From<&proto::ShardLease> for ShardIdentity {
    /// The identity of the input a lease was granted for.
    fn from(l: &proto::ShardLease) -> Self {
        ShardIdentity {
            size: l.size,
            mtime_ns: l.mtime_ns,
            inode: l.inode,
            ctime_ns: l.ctime_ns,
        }
    }
}

impl FailureKind {
    /// Whether another attempt may succeed.
    pub fn retryable(self) -> bool {
        self != FailureKind::Permanent
    }
    /// Whether the attempt counts against `--max-attempts`.
    pub fn counts_as_attempt(self) -> bool {
        self != FailureKind::Abandoned
    }
}

impl proto::FailRequest {
    /// The failure kind; an unknown value from a newer worker is retryable.
    pub fn failure_kind(&self) -> FailureKind {
        FailureKind::try_from(self.kind).unwrap_or(FailureKind::Retryable)
    }
}

impl From<&ShardCounts> for proto::Progress {
    /// The progress of a committed shard (peak RSS is a live-only number).
    fn from(c: &ShardCounts) -> Self {
        proto::Progress::from(ShardProgress::from(c))
    }
}

impl From<ShardProgress> for proto::Progress {
    /// Progress on the wire (peak RSS is the worker's to fill in).
    fn from(p: ShardProgress) -> Self {
        proto::Progress {
            members: p.members,
            bytes_read: p.bytes_read,
            json_files: p.json_files,
            rows: p.rows,
            peak_rss_bytes: 0,
        }
    }
}

impl From<&proto::Progress> for ShardProgress {
    /// The progress a heartbeat carries (its peak RSS is read apart).
    fn from(p: &proto::Progress) -> Self {
        ShardProgress {
            members: p.members,
            bytes_read: p.bytes_read,
            json_files: p.json_files,
            rows: p.rows,
        }
    }
}

/// Seconds left at `bytes_per_s` for the bytes not read yet; `None` while no
/// rate is known or when nothing is left to estimate.
pub fn eta_secs(bytes_read: u64, bytes_total: u64, bytes_per_s: f64) -> Option<f64> {
    (bytes_per_s > 0.0 && bytes_total > bytes_read)
        .then(|| (bytes_total - bytes_read) as f64 / bytes_per_s)
}

impl proto::StatusResponse {
    /// Average read rate since the job started, bytes per second.
    pub fn bytes_per_s(&self) -> f64 {
        self.bytes_read as f64 / (self.elapsed_ms.max(1) as f64 / 1000.0)
    }
    /// Seconds left at the average rate.
    pub fn eta_secs(&self) -> Option<f64> {
        eta_secs(self.bytes_read, self.bytes_total, self.bytes_per_s())
    }
}

impl crate::manifest::ImageChecks {
    /// Sets the image-check fields of a job spec.
    pub fn to_proto(&self, spec: &mut proto::JobSpec) {
        spec.dims = self.dims.clone();
        spec.check_decode = self.decode;
        spec.skip_bad_images = self.skip_bad;
        spec.hash_fields = self.hash_fields.clone();
        spec.max_pixels = self.max_pixels;
    }

    /// The image checks a job spec asks for.
    pub fn from_proto(spec: &proto::JobSpec) -> Self {
        crate::manifest::ImageChecks {
            dims: spec.dims.clone(),
            decode: spec.check_decode,
            skip_bad: spec.skip_bad_images,
            hash_fields: spec.hash_fields.clone(),
            max_pixels: spec.max_pixels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_is_the_rest_over_the_rate() {
        assert_eq!(eta_secs(25, 100, 5.0), Some(15.0));
        assert_eq!(eta_secs(0, 100, 0.0), None);
        assert_eq!(eta_secs(100, 100, 5.0), None);
    }

    #[test]
    fn progress_crosses_the_wire_unchanged() {
        let p = ShardProgress {
            members: 1,
            bytes_read: 2,
            json_files: 3,
            rows: 4,
        };
        let wire = proto::Progress::from(p);
        assert_eq!(
            (wire.members, wire.bytes_read, wire.json_files, wire.rows),
            (1, 2, 3, 4)
        );
        assert_eq!(ShardProgress::from(&wire), p);
    }

    #[test]
    fn modes_cross_the_wire_and_unknown_ones_are_refused() {
        for m in [Mode::Extract, Mode::Index] {
            assert_eq!(Mode::from_proto(m.to_proto()), Some(m));
            assert_eq!(m.as_str().parse::<Mode>(), Ok(m));
        }
        assert_eq!(Mode::from_proto(7), None);
        assert!("indexes".parse::<Mode>().is_err());
    }

    #[test]
    fn job_outputs_cross_the_wire_unchanged() {
        let outputs = [
            JobOutput::default(),
            JobOutput::Extract {
                members: false,
                captions: true,
            },
            JobOutput::index(IndexFormats::default()),
            JobOutput::index("energon,dali,wids".parse().unwrap()),
        ];
        for o in outputs {
            let mut spec = proto::JobSpec::default();
            o.to_proto(&mut spec);
            assert_eq!(JobOutput::from_proto(&spec), Ok(o));
        }
        let mut spec = proto::JobSpec::default();
        JobOutput::index(IndexFormats::default()).to_proto(&mut spec);
        spec.index_formats = vec!["lmdb".into()];
        assert!(JobOutput::from_proto(&spec).unwrap_err().contains("lmdb"));
    }

    #[test]
    fn fields_and_identities_are_read_off_the_wire() {
        let spec = proto::JobSpec {
            caption_field: "c".into(),
            width_field: "w".into(),
            height_field: "h".into(),
            filename_field: "f".into(),
            extra_columns: vec!["x".into()],
            ..Default::default()
        };
        let fields = FieldMap::from_proto(&spec);
        assert_eq!(
            fields,
            FieldMap {
                caption: "c".into(),
                width: "w".into(),
                height: "h".into(),
                filename: "f".into(),
                extra: vec!["x".into()],
            }
        );
        let lease = proto::ShardLease {
            size: 1,
            mtime_ns: 2,
            inode: 3,
            ctime_ns: 4,
            ..Default::default()
        };
        let id = ShardIdentity::from(&lease);
        assert_eq!((id.size, id.mtime_ns, id.inode, id.ctime_ns), (1, 2, 3, 4));
    }

    #[test]
    fn failure_kinds_read_as_their_names() {
        assert!(FailureKind::Retryable.retryable() && FailureKind::Retryable.counts_as_attempt());
        assert!(!FailureKind::Permanent.retryable());
        assert!(!FailureKind::Abandoned.counts_as_attempt());
        let unknown = proto::FailRequest {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(unknown.failure_kind(), FailureKind::Retryable);
    }
}
