//! Minimal SVG charts: scatter and line plots with axes, ticks and a legend.
//!
//! Written here rather than with a plotting crate because the output must be the same
//! bytes for the same input (the replay's determinism promise) and must not depend on the
//! fonts installed on the machine: text is left to the viewer, as SVG `<text>`.

use std::fmt::Write;

/// One named series.
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points (x, y).
    pub points: Vec<(f64, f64)>,
    /// Optional band (x, low, high) drawn behind the line.
    pub band: Vec<(f64, f64, f64)>,
    /// Draw as markers (true) or as a line (false).
    pub markers: bool,
    /// A label beside each marker (empty: none).
    pub point_labels: Vec<String>,
    /// A colour of its own, for a reference series (the hull, single models) that must
    /// never take a policy's; `None`: the next colour of the palette.
    pub color: Option<&'static str>,
}

const PLOT_WIDTH: f64 = 560.0;
const HEIGHT: f64 = 560.0;
const LEFT: f64 = 80.0;
/// Width of one character of the 12 px legend, generously: the legend must not be cut.
const CHAR_WIDTH: f64 = 7.5;
/// The same for the 10 px labels beside markers.
const LABEL_CHAR_WIDTH: f64 = 6.5;
const TOP: f64 = 56.0;
const BOTTOM: f64 = 60.0;
/// The policies' colours (Tableau's ten less its grey, which single models keep).
const PALETTE: [&str; 9] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
];
/// Single models' colour.
pub const SINGLE_MODELS: &str = "#7f7f7f";
/// The hull's colour.
pub const HULL: &str = "#000000";
/// The full-information references' colour.
pub const FULL_INFORMATION: &str = "#393b79";

/// The labels beside markers placed so far, so that none is written over another: models
/// of about one cost and quality (the cheap end of a frontier) crowd their labels.
struct Labels {
    /// Where the plot begins and ends: a label stays between, off the axis's ticks and
    /// the legend.
    left_edge: f64,
    right_edge: f64,
    /// The boxes taken by markers and labels, `[left, top, right, bottom]`.
    placed: Vec<[f64; 4]>,
}

impl Labels {
    /// Text height and the gap between a marker and its label, px.
    const HEIGHT: f64 = 11.0;
    const GAP: f64 = 7.0;

    /// Where the label `text` of the marker at `(x, y)` goes: `(x, baseline, anchor)`.
    /// Above right of the marker (left when that runs past the plot), else the first of
    /// rows further up or down, up to four rows away, on either side, that no label holds
    /// and the plot has room for.
    fn place(&mut self, x: f64, y: f64, text: &str) -> (f64, f64, &'static str) {
        let width = LABEL_CHAR_WIDTH * text.chars().count() as f64;
        let right_first = x + Self::GAP + width <= self.right_edge;
        let sides = if right_first { [1.0, -1.0] } else { [-1.0, 1.0] };
        let rows = [0.0, -1.0, 1.0, -2.0, 2.0, -3.0, 3.0, -4.0, 4.0];
        let candidate = |side: f64, row: f64| {
            let baseline = y - Self::GAP + row * (Self::HEIGHT + 1.0);
            let left = if side > 0.0 {
                x + Self::GAP
            } else {
                x - Self::GAP - width
            };
            [left, baseline - Self::HEIGHT, left + width, baseline]
        };
        let free = |b: &[f64; 4]| {
            self.left_edge <= b[0]
                && b[2] <= self.right_edge
                && self
                    .placed
                    .iter()
                    .all(|p| b[2] <= p[0] || p[2] <= b[0] || b[3] <= p[1] || p[3] <= b[1])
        };
        let chosen = rows
            .iter()
            .flat_map(|&row| sides.map(|side| (side, row)))
            .map(|(side, row)| (side, candidate(side, row)))
            .find(|(_, b)| free(b))
            .unwrap_or((sides[0], candidate(sides[0], 0.0)));
        let (side, b) = chosen;
        self.placed.push(b);
        if side > 0.0 {
            (b[0], b[3], "start")
        } else {
            (b[2], b[3], "end")
        }
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * magnitude);
    let start = (lo / step).ceil() as i64;
    let end = (hi / step).floor() as i64;
    (start..=end).map(|i| i as f64 * step).collect()
}

fn label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() < 0.01 || v.abs() >= 1e5 {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Renders the series as an SVG document; `note` is a line under the title saying how to
/// read the chart (empty: none). The legend is as wide as its longest label.
pub fn chart(title: &str, note: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let all_x = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0).chain(s.band.iter().map(|b| b.0)));
    let all_y = series.iter().flat_map(|s| {
        s.points
            .iter()
            .map(|p| p.1)
            .chain(s.band.iter().flat_map(|b| [b.1, b.2]))
    });
    let (mut x0, mut x1) = all_x.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let (mut y0, mut y1) = all_y.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
        (a.min(y), b.max(y))
    });
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = |lo: f64, hi: f64| {
        let span = (hi - lo).abs().max(1e-9);
        (lo - 0.05 * span, hi + 0.05 * span)
    };
    (x0, x1) = pad(x0, x1);
    (y0, y1) = pad(y0, y1);
    let longest = series.iter().map(|s| s.label.chars().count()).max().unwrap_or(0);
    let right = (40.0 + CHAR_WIDTH * longest as f64).max(160.0);
    let width = LEFT + PLOT_WIDTH + right;
    let plot_w = PLOT_WIDTH;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * plot_w;
    let sy = |y: f64| TOP + plot_h - (y - y0) / (y1 - y0) * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{HEIGHT}" viewBox="0 0 {width} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(title)
    );
    if !note.is_empty() {
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="42" font-size="11" fill="#555" text-anchor="middle">{}</text>"##,
            LEFT + plot_w / 2.0,
            escape(note)
        );
    }
    for t in nice_ticks(x0, x1) {
        let x = sx(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/>"##,
            TOP + plot_h
        );
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            TOP + plot_h + 18.0,
            label(t)
        );
    }
    for t in nice_ticks(y0, y1) {
        let y = sy(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/>"##,
            LEFT + plot_w
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            label(t)
        );
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 16.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + plot_h / 2.0,
        escape(y_label)
    );
    let mut palette = PALETTE.iter().cycle();
    let colors: Vec<&str> = series
        .iter()
        .map(|s| s.color.unwrap_or_else(|| palette.next().copied().unwrap_or(HULL)))
        .collect();
    // Every marker is there before any label: a label is written over none.
    let markers = series
        .iter()
        .filter(|s| s.markers)
        .flat_map(|s| &s.points)
        .map(|p| [sx(p.0) - 5.0, sy(p.1) - 5.0, sx(p.0) + 5.0, sy(p.1) + 5.0]);
    let mut labels = Labels {
        left_edge: LEFT,
        right_edge: LEFT + plot_w,
        placed: markers.collect(),
    };
    // The references (colours of their own) first: a policy's marker is never hidden
    // under a single model's or a full-information point.
    let references = (0..series.len()).filter(|&i| series[i].color.is_some());
    let policies = (0..series.len()).filter(|&i| series[i].color.is_none());
    for i in references.chain(policies) {
        let (s, color) = (&series[i], colors[i]);
        if !s.band.is_empty() {
            let upper: Vec<String> = s
                .band
                .iter()
                .map(|b| format!("{:.1},{:.1}", sx(b.0), sy(b.2)))
                .collect();
            let lower: Vec<String> = s
                .band
                .iter()
                .rev()
                .map(|b| format!("{:.1},{:.1}", sx(b.0), sy(b.1)))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polygon points="{} {}" fill="{color}" fill-opacity="0.15" stroke="none"/>"#,
                upper.join(" "),
                lower.join(" ")
            );
        }
        if s.markers {
            for p in &s.points {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="5" fill="{color}"/>"#,
                    sx(p.0),
                    sy(p.1)
                );
            }
            for (p, text) in s.points.iter().zip(&s.point_labels) {
                let (x, y, anchor) = labels.place(sx(p.0), sy(p.1), text);
                let _ = writeln!(
                    svg,
                    r##"<text x="{x:.1}" y="{y:.1}" font-size="10" fill="#333" text-anchor="{anchor}">{}</text>"##,
                    escape(text)
                );
            }
        } else {
            let line: Vec<String> = s
                .points
                .iter()
                .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1)))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                line.join(" ")
            );
        }
    }
    for (i, (s, color)) in series.iter().zip(&colors).enumerate() {
        let ly = TOP + 10.0 + 18.0 * i as f64;
        let lx = LEFT + plot_w + 16.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{color}"/>"#,
            ly - 10.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{ly:.1}">{}</text>"#,
            lx + 18.0,
            escape(&s.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The number in the first ` name="…"` of `text`.
    fn attribute(text: &str, name: &str) -> f64 {
        text.split(&format!(" {name}=\""))
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The legend sits right of the plot; the document is wide enough for its longest
    /// label at the generous character width, and markers carry their labels.
    #[test]
    fn the_legend_fits_and_markers_are_labelled() {
        let label = "linucb(alpha=0.05,lambda=30) budget=0.0012 pacer-step=0.002";
        let s = vec![Series {
            label: label.into(),
            points: vec![(0.0, 0.0), (1.0, 1.0)],
            band: Vec::new(),
            markers: true,
            point_labels: vec!["gpt-4".into(), "mixtral".into()],
            color: None,
        }];
        let svg = chart("t", "how to read it", "x", "y", &s);
        let width = attribute(&svg, "width");
        let legend_x = LEFT + PLOT_WIDTH + 16.0 + 18.0;
        assert!(width >= legend_x + CHAR_WIDTH * label.len() as f64, "{width}");
        assert!(
            svg.contains(">gpt-4</text>")
                && svg.contains(">mixtral</text>")
                && svg.contains(">how to read it</text>")
        );
        // The rightmost marker's label would cross into the legend: it ends at its marker.
        let rightmost = svg.lines().find(|l| l.contains(">mixtral</text>")).unwrap();
        assert!(rightmost.contains(r#"text-anchor="end""#), "{rightmost}");
        let leftmost = svg.lines().find(|l| l.contains(">gpt-4</text>")).unwrap();
        assert!(leftmost.contains(r#"text-anchor="start""#), "{leftmost}");
    }

    /// Markers at about one point keep their labels apart: no label's box overlaps another
    /// label's or a marker, where each would sit at the same place alone, and every label
    /// stays inside the plot.
    #[test]
    fn crowded_labels_do_not_overlap() {
        let points: Vec<(f64, f64)> = (0..6)
            .map(|i| (0.001 * i as f64, 0.5 + 0.001 * i as f64))
            .collect();
        let s = vec![Series {
            label: "single models".into(),
            points: points.iter().copied().chain([(1.0, 1.0)]).collect(),
            band: Vec::new(),
            markers: true,
            point_labels: (0..7).map(|i| format!("model-{i}")).collect(),
            color: None,
        }];
        let svg = chart("t", "", "x", "y", &s);
        let labels: Vec<[f64; 4]> = svg
            .lines()
            .filter(|l| l.contains(">model-"))
            .map(|l| {
                let width = LABEL_CHAR_WIDTH * "model-0".len() as f64;
                let (x, y) = (attribute(l, "x"), attribute(l, "y"));
                let left = if l.contains(r#"text-anchor="end""#) {
                    x - width
                } else {
                    x
                };
                [left, y - Labels::HEIGHT, left + width, y]
            })
            .collect();
        let markers: Vec<[f64; 4]> = svg
            .lines()
            .filter(|l| l.starts_with("<circle"))
            .map(|l| {
                let (x, y) = (attribute(l, "cx"), attribute(l, "cy"));
                [x - 5.0, y - 5.0, x + 5.0, y + 5.0]
            })
            .collect();
        assert_eq!((labels.len(), markers.len()), (7, 7));
        // Coordinates are written to 0.1 px.
        let apart = |a: &[f64; 4], b: &[f64; 4]| {
            a[2] <= b[0] + 0.1 || b[2] <= a[0] + 0.1 || a[3] <= b[1] + 0.1 || b[3] <= a[1] + 0.1
        };
        for (i, a) in labels.iter().enumerate() {
            for b in labels[i + 1..].iter().chain(&markers) {
                assert!(apart(a, b), "{a:?} and {b:?} overlap:\n{svg}");
            }
            assert!(
                a[0] >= LEFT - 0.1 && a[2] <= LEFT + PLOT_WIDTH + 0.1,
                "{a:?} leaves the plot"
            );
        }
    }

    /// However many policies a chart shows, none takes the colour of a reference series.
    #[test]
    fn reference_series_keep_their_colours() {
        let series = |label: String, color| Series {
            label,
            points: vec![(0.0, 0.0)],
            band: Vec::new(),
            markers: true,
            point_labels: Vec::new(),
            color,
        };
        let mut s: Vec<Series> = (0..12).map(|i| series(format!("policy {i}"), None)).collect();
        s.push(series("single models".into(), Some(SINGLE_MODELS)));
        let svg = chart("t", "", "x", "y", &s);
        let swatches: Vec<&str> = svg
            .lines()
            .filter(|l| l.starts_with("<rect") && l.contains(r#"width="12""#))
            .map(|l| {
                l.split(r#"fill=""#)
                    .nth(1)
                    .and_then(|f| f.split('"').next())
                    .unwrap()
            })
            .collect();
        assert_eq!(swatches.len(), 13);
        assert_eq!(swatches[12], SINGLE_MODELS);
        for reference in [SINGLE_MODELS, HULL, FULL_INFORMATION] {
            assert!(!swatches[..12].contains(&reference), "{swatches:?}");
        }
        // The palette cycles among the policies alone.
        assert_eq!(swatches[9], swatches[0]);
        assert_ne!(swatches[8], swatches[0]);
    }

    #[test]
    fn chart_is_deterministic_and_escapes_text() {
        let s = vec![Series {
            label: "a<b".into(),
            points: vec![(0.0, 0.0), (1.0, 2.0)],
            band: vec![(0.0, -0.5, 0.5), (1.0, 1.5, 2.5)],
            markers: false,
            point_labels: Vec::new(),
            color: None,
        }];
        let a = chart("t", "", "x", "y", &s);
        assert_eq!(a, chart("t", "", "x", "y", &s));
        assert!(a.contains("a&lt;b") && a.contains("<polyline") && a.contains("<polygon"));
        assert_eq!(
            nice_ticks(0.0, 1.0),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
    }
}
