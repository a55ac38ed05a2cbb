//! SimpleTuner 4.10.1's aspect buckets, computed the way its metadata
//! backends do for an entry without `crop` (shardprep's entries):
//! `meets_resolution_requirements` decides `too_small`, then
//! `TrainingSample.prepare()` → `calculate_target_size()` gives the target
//! size, whose rounded aspect ratio is the bucket (`str(aspect_ratio)`).
//!
//! Source read: `simpletuner/helpers/multiaspect/image.py`
//! (`calculate_new_size_by_pixel_area`, `calculate_new_size_by_pixel_edge`,
//! `_round_to_nearest_multiple`, `calculate_image_aspect_ratio`),
//! `image_manipulation/training_sample.py` and
//! `metadata/backends/{base,parquet,webshart}.py`. Without `crop`,
//! `maximum_image_size` and `target_downsample_size` do not move an image to
//! another bucket (they only size the crop's intermediate image).

/// The entry's settings that decide buckets, plus the model's alignment.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketRule {
    pub resolution: f64,
    /// `area` (megapixels) or `pixel` (shorter edge).
    pub resolution_type: ResolutionType,
    /// `None`: no minimum.
    pub minimum_image_size: Option<f64>,
    /// Pixels every target edge is a multiple of (`--aspect_bucket_alignment`,
    /// which SimpleTuner forces to 64 for SDXL, SD3, Sana and HiDream).
    pub alignment: u32,
    /// Decimals of the bucket's aspect ratio (`--aspect_bucket_rounding`, default 2).
    pub rounding: u32,
}

/// How `resolution` and `minimum_image_size` are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolutionType {
    Area,
    Pixel,
}

impl ResolutionType {
    pub fn parse(s: &str) -> Option<ResolutionType> {
        match s {
            "area" => Some(ResolutionType::Area),
            "pixel" => Some(ResolutionType::Pixel),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ResolutionType::Area => "area",
            ResolutionType::Pixel => "pixel",
        }
    }
}

/// The alignment SimpleTuner forces for SDXL (the family the tests run).
pub const DEFAULT_ALIGNMENT: u32 = 64;

/// Where one image lands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Placement {
    /// The bucket's aspect ratio (rounded as SimpleTuner rounds it).
    Bucket(f64),
    /// Below `minimum_image_size`: SimpleTuner skips it as `too_small`.
    TooSmall,
    /// A zero edge: SimpleTuner's size calculation raises for it.
    Invalid,
}

impl BucketRule {
    /// Where an image of `width` × `height` goes.
    pub fn place(&self, width: u64, height: u64) -> Placement {
        if width == 0 || height == 0 {
            return Placement::Invalid;
        }
        if !self.big_enough(width, height) {
            return Placement::TooSmall;
        }
        let (w, h) = (width as f64, height as f64);
        let ar = self.round_aspect(w / h);
        if ar == 0.0 {
            // SimpleTuner divides by it and logs the error; the image is in no bucket.
            return Placement::Invalid;
        }
        let (tw, th) = match self.resolution_type {
            ResolutionType::Area => {
                let edge = self.to_multiple((self.resolution * 1e6).sqrt().trunc());
                if ar == 1.0 {
                    (edge, edge)
                } else {
                    let edge = edge as f64;
                    (
                        self.to_multiple(edge * ar.sqrt()),
                        self.to_multiple(edge / ar.sqrt()),
                    )
                }
            }
            ResolutionType::Pixel => {
                let r = self.resolution;
                let (tw, th) = if width < height {
                    (r, (r / ar).trunc())
                } else {
                    ((r * ar).trunc(), r)
                };
                (self.to_multiple(tw), self.to_multiple(th))
            }
        };
        Placement::Bucket(self.round_aspect(tw as f64 / th as f64))
    }

    /// `meets_resolution_requirements` without crop.
    fn big_enough(&self, w: u64, h: u64) -> bool {
        let Some(min) = self.minimum_image_size else {
            return true;
        };
        match self.resolution_type {
            ResolutionType::Pixel => min <= w as f64 && min <= h as f64,
            ResolutionType::Area => min * 1e6 <= (w * h) as f64,
        }
    }

    /// `_round_to_nearest_multiple`: Python's `round` (ties to even), at least one multiple.
    fn to_multiple(&self, v: f64) -> i64 {
        let m = self.alignment.max(1) as i64;
        let r = (v / m as f64).round_ties_even() as i64 * m;
        r.max(m)
    }

    /// Python's `round(x, rounding)`: the nearest decimal of the exact
    /// binary value, ties to even (Rust's exact formatting does the same).
    fn round_aspect(&self, x: f64) -> f64 {
        format!("{:.*}", self.rounding as usize, x)
            .parse()
            .unwrap_or(x)
    }
}

/// A bucket's name as SimpleTuner writes it (`str(float)`: `1.0`, `0.75`).
pub fn bucket_name(aspect: f64) -> String {
    let s = format!("{aspect}");
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> BucketRule {
        BucketRule {
            resolution: 1.0,
            resolution_type: ResolutionType::Area,
            minimum_image_size: Some(0.75),
            alignment: 64,
            rounding: 2,
        }
    }

    fn name(r: &BucketRule, w: u64, h: u64) -> String {
        match r.place(w, h) {
            Placement::Bucket(a) => bucket_name(a),
            other => format!("{other:?}"),
        }
    }

    /// SimpleTuner's own functions on 211 sizes in three settings
    /// (tests/simpletuner/bucket_table.py wrote the table).
    #[test]
    fn every_size_lands_where_simpletuner_4_10_1_puts_it() {
        let table: Vec<(String, f64, u64, u64, String)> =
            serde_json::from_str(include_str!("simpletuner_buckets.json")).unwrap();
        assert!(table.len() > 600);
        for (mode, resolution, w, h, want) in table {
            let r = BucketRule {
                resolution,
                resolution_type: ResolutionType::parse(&mode).unwrap(),
                minimum_image_size: None,
                ..seed()
            };
            let got = match r.place(w, h) {
                Placement::Bucket(a) => bucket_name(a),
                Placement::Invalid => "error".into(),
                Placement::TooSmall => "too small".into(),
            };
            assert_eq!(got, want, "{mode} {resolution}: {w}x{h}");
        }
    }

    #[test]
    fn minimum_image_size_drops_small_images() {
        let r = seed();
        assert_eq!(name(&r, 1024, 1024), "1.0");
        assert_eq!(name(&r, 800, 800), "TooSmall");
        assert_eq!(name(&r, 0, 800), "Invalid");
    }

    #[test]
    fn python_rounding_is_reproduced() {
        let r = seed();
        // 9/8 = 1.125 exactly: Python's round(1.125, 2) is 1.12 (ties to even).
        assert_eq!(r.round_aspect(1.125), 1.12);
        assert_eq!(r.round_aspect(2.675), 2.67); // the double is below 2.675
        assert_eq!(r.to_multiple(160.0), 128); // 2.5 multiples → 2 (even)
        assert_eq!(r.to_multiple(224.0), 256); // 3.5 → 4
        assert_eq!(r.to_multiple(1.0), 64); // at least one multiple
        assert_eq!(bucket_name(1.0), "1.0");
        assert_eq!(bucket_name(0.57), "0.57");
    }

    #[test]
    fn pixel_mode_uses_the_shorter_edge() {
        let r = BucketRule {
            resolution: 1024.0,
            resolution_type: ResolutionType::Pixel,
            minimum_image_size: Some(512.0),
            ..seed()
        };
        assert_eq!(name(&r, 2048, 1024), "2.0");
        assert_eq!(name(&r, 600, 400), "TooSmall");
    }
}
