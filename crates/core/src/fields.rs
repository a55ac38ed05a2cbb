//! Which JSON fields feed which parquet columns, and the presets that set them.

use serde::{Deserialize, Serialize};

/// The JSON field names a job reads from each sample's `.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldMap {
    /// Text of the `caption` column and of `data/<stem>.txt`.
    pub caption: String,
    /// Source of the `width` column; JSONs without it are not samples (as in the seed).
    pub width: String,
    /// Source of the `height` column.
    pub height: String,
    /// Source of the `filename` column: the image's file name.
    pub filename: String,
    /// More JSON fields copied into parquet columns of the same name.
    pub extra: Vec<String>,
}

impl FieldMap {
    /// The SimpleTuner DALLE-3 preset: `short_caption`, `width`, `height`, `image_name`.
    pub fn dalle3() -> Self {
        FieldMap {
            caption: "short_caption".into(),
            width: "width".into(),
            height: "height".into(),
            filename: "image_name".into(),
            extra: Vec::new(),
        }
    }

    /// A preset by name.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "dalle3" => Some(Self::dalle3()),
            _ => None,
        }
    }
}

/// Names of the presets [`FieldMap::preset`] knows.
pub const PRESETS: &[&str] = &["dalle3"];
