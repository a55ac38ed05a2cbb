//! The page's pictures, drawn with plotters' SVG backend into strings that
//! the page inlines. Text is SVG `<text>` in the page's font: no font file.

use std::collections::BTreeMap;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{IntoSegmentedCoord, SegmentValue};
use plotters::prelude::*;

use super::PageError;
use super::buckets::BucketRule;
use super::stats::{Buckets, Stats};
use crate::report::ShardReport;

const W: u32 = 720;
const H: u32 = 320;
const BLUE: RGBColor = RGBColor(0x2b, 0x6c, 0xb0);
const RED: RGBColor = RGBColor(0xc0, 0x39, 0x2b);
const GREY: RGBColor = RGBColor(0x88, 0x88, 0x88);
const FONT: &str = "sans-serif";

fn err(chart: &'static str) -> impl Fn(String) -> PageError {
    move |detail| PageError::Chart { chart, detail }
}

/// Runs `draw` on a fresh SVG canvas and returns the SVG text.
fn svg(
    chart: &'static str,
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<(), String>,
) -> Result<String, PageError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (W, H)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| e.to_string())
            .map_err(err(chart))?;
        draw(&root).map_err(err(chart))?;
        root.present()
            .map_err(|e| e.to_string())
            .map_err(err(chart))?;
    }
    Ok(out)
}

/// Width × height: one disc per distinct size (area ∝ samples), and the
/// `minimum_image_size` limit below which the trainer drops images.
pub fn sizes(stats: &Stats, rule: &BucketRule) -> Result<String, PageError> {
    let max_w = stats.sizes.keys().map(|k| k.0).max().unwrap_or(1).max(1) as f64 * 1.1;
    let max_h = stats.sizes.keys().map(|k| k.1).max().unwrap_or(1).max(1) as f64 * 1.1;
    let most = stats.sizes.values().copied().max().unwrap_or(1).max(1) as f64;
    svg("image size", |root| {
        let mut c = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..max_w, 0f64..max_h)
            .map_err(|e| e.to_string())?;
        c.configure_mesh()
            .x_desc("width (px)")
            .y_desc("height (px)")
            .label_style((FONT, 12))
            .draw()
            .map_err(|e| e.to_string())?;
        if let Some(min) = rule.minimum_image_size {
            c.draw_series(std::iter::once(min_line(rule, min, max_w, max_h)))
                .map_err(|e| e.to_string())?;
        }
        let discs = stats.sizes.iter().map(|(&(w, h), &n)| {
            let r = 3.0 + 14.0 * (n as f64 / most).sqrt();
            Circle::new((w as f64, h as f64), r as i32, BLUE.mix(0.55).filled())
        });
        c.draw_series(discs).map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// The edge of the `too_small` region: `w·h = min` (area) or the two edges (pixel).
fn min_line(rule: &BucketRule, min: f64, max_w: f64, max_h: f64) -> PathElement<(f64, f64)> {
    let style = RED.stroke_width(2);
    match rule.resolution_type {
        super::buckets::ResolutionType::Area => {
            let area = min * 1e6;
            let pts = (1..=200)
                .map(|i| max_w * i as f64 / 200.0)
                .map(|w| (w, (area / w).min(max_h)))
                .collect::<Vec<_>>();
            PathElement::new(pts, style)
        }
        super::buckets::ResolutionType::Pixel => {
            PathElement::new(vec![(min, max_h), (min, min), (max_w, min)], style)
        }
    }
}

/// Samples per bucket, and the ones the trainer drops.
pub fn buckets(b: &Buckets) -> Result<String, PageError> {
    let mut bars: Vec<(String, f64, RGBColor)> = b
        .by_aspect
        .iter()
        .map(|(a, (n, _))| (a.name(), *n as f64, BLUE))
        .collect();
    bars.push(("too small".into(), b.too_small as f64, RED));
    if b.invalid > 0 {
        bars.push(("no size".into(), b.invalid as f64, GREY));
    }
    bar_chart("bucket", "aspect bucket (width / height)", "samples", &bars)
}

/// Seconds per shard.
pub fn shard_seconds(shards: &[ShardReport]) -> Result<String, PageError> {
    let bars: Vec<(String, f64, RGBColor)> = shards
        .iter()
        .map(|s| {
            let secs = s.elapsed_ms.unwrap_or(0) as f64 / 1000.0;
            let color = if s.counts.is_some() { BLUE } else { RED };
            (short(&s.name), secs, color)
        })
        .collect();
    bar_chart("shard time", "shard (red: not done)", "seconds", &bars)
}

/// A histogram of `counts` (value → samples) in at most 40 equal bins.
pub fn histogram(
    chart: &'static str,
    counts: &BTreeMap<u64, u64>,
    x_desc: &str,
    limit: Option<u64>,
) -> Result<String, PageError> {
    let max = counts.keys().next_back().copied().unwrap_or(0);
    let width = (max / 40 + 1).max(1);
    let mut bins: BTreeMap<u64, u64> = BTreeMap::new();
    for (&v, &n) in counts {
        *bins.entry(v / width).or_default() += n;
    }
    let bars: Vec<(String, f64, RGBColor)> = (0..=max / width)
        .map(|b| {
            let lo = b * width;
            let over = limit.is_some_and(|l| lo + width > l + 1);
            let label = if width == 1 {
                lo.to_string()
            } else {
                format!("{lo}-{}", lo + width - 1)
            };
            let n = bins.get(&b).copied().unwrap_or(0) as f64;
            (label, n, if over { RED } else { BLUE })
        })
        .collect();
    bar_chart(chart, x_desc, "samples", &bars)
}

/// A bar per `(label, value, colour)`.
fn bar_chart(
    chart: &'static str,
    x_desc: &str,
    y_desc: &str,
    bars: &[(String, f64, RGBColor)],
) -> Result<String, PageError> {
    let n = bars.len().max(1) as u32;
    let top = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1.0) * 1.1;
    // At most about 12 labels, so that they do not overlap.
    let step = bars.len().div_ceil(12).max(1);
    svg(chart, |root| {
        let mut c = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d((0u32..n).into_segmented(), 0f64..top)
            .map_err(|e| e.to_string())?;
        c.configure_mesh()
            .disable_x_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_labels(bars.len().min(40))
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) if (*i as usize).is_multiple_of(step) => bars
                    .get(*i as usize)
                    .map(|b| b.0.clone())
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .label_style((FONT, 11))
            .draw()
            .map_err(|e| e.to_string())?;
        let rects = bars.iter().enumerate().map(|(i, (_, v, color))| {
            let i = i as u32;
            let mut r = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0f64),
                    (SegmentValue::Exact(i + 1), *v),
                ],
                color.filled(),
            );
            r.set_margin(0, 0, 2, 2);
            r
        });
        c.draw_series(rects).map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// A shard's name without its folder and `.tar`, for axis labels.
fn short(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    base.strip_suffix(".tar").unwrap_or(base).to_string()
}
