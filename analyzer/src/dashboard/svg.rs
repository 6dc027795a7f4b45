//! Line charts as inline SVG, drawn on the server: a few series over time with
//! a y axis from 0, gridlines with labels, the time span under the plot and a
//! legend. No script and no external asset, so the dashboard needs no CDN.
//!
//! Every series is a `<g data-series=NAME data-points=N>` holding one polyline
//! with `data-cohort` (and markers at the points while there are few), so a
//! browser test can find the canary's and control's lines without reading pixels.

use super::html::escape;
use std::fmt::Write as _;

/// Drawing area, in SVG user units (the element scales to its container).
const WIDTH: f64 = 480.0;
const HEIGHT: f64 = 180.0;
/// Room for the y labels on the left and the time labels below.
const LEFT: f64 = 56.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 22.0;
/// Horizontal gridlines above the zero line.
const GRIDLINES: u32 = 4;
/// Points per series up to which each gets a marker (beyond, they would merge into a smear).
const MAX_MARKERS: usize = 60;

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Shown in the legend and written to `data-series` / `data-cohort`.
    pub name: String,
    /// CSS colour of the line.
    pub colour: &'static str,
    /// Dashed (a reference line such as the target share) or solid.
    pub dashed: bool,
    /// `(x, y)`: x in Unix milliseconds; `None` where there was no data.
    pub points: Vec<(u64, Option<f64>)>,
}

/// A vertical line across a chart at a moment, labelled: a step change or a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub at_ms: u64,
    /// E.g. `5 %`, `rolled back`; written to `data-marker` too.
    pub label: String,
}

/// A chart: title, series, markers and how to print a y value (e.g. `1.5 ms`).
#[derive(Debug)]
pub struct Chart<'a> {
    /// Id of the `<svg>` element, e.g. `chart-error-rate`.
    pub id: &'a str,
    pub title: &'a str,
    pub series: &'a [Series],
    pub markers: &'a [Marker],
    pub format_y: fn(f64) -> String,
}

/// The smallest "nice" number (1, 2, 2.5 or 5 times a power of ten) at or above `v`,
/// so gridlines fall on round values.
fn nice_ceiling(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].into_iter().map(|m| m * magnitude).find(|&c| c >= v * (1.0 - 1e-9)).unwrap_or(v)
}

/// `HH:MM:SS` (UTC) of a Unix-millisecond time.
pub fn clock(at_ms: u64) -> String {
    let s = at_ms / 1_000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3_600, s / 60 % 60, s % 60)
}

/// The points that have a value. A check without data (`None`: no requests, or no
/// latency histogram flushed by Envoy in that interval) is left out and the line joins
/// its neighbours; the markers show where the values really are.
fn defined(points: &[(u64, Option<f64>)]) -> Vec<(u64, f64)> {
    points.iter().filter_map(|&(x, y)| Some((x, y.filter(|y| y.is_finite())?))).collect()
}

impl Chart<'_> {
    /// The `<svg>` element. With no data at all it says so instead of drawing empty axes.
    pub fn render(&self) -> String {
        let values = || self.series.iter().flat_map(|s| s.points.iter().filter_map(|p| p.1.filter(|y| y.is_finite())));
        let xs = || self.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
        let mut out = format!(
            "<svg id=\"{}\" class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\">\
             <title>{}</title>",
            escape(self.id),
            escape(self.title),
            escape(self.title)
        );
        let (Some(x_min), Some(x_max)) = (xs().min(), xs().max()) else {
            let _ = write!(
                out,
                "<text class=\"empty\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">no checks yet</text></svg>",
                WIDTH / 2.0,
                HEIGHT / 2.0
            );
            return out;
        };
        let y_max = nice_ceiling(values().fold(0.0, f64::max));
        let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
        // One point (or several at the same time) sits in the middle.
        let span = x_max.saturating_sub(x_min);
        let x_of = |x: u64| {
            if span == 0 { LEFT + plot_w / 2.0 } else { LEFT + plot_w * (x.saturating_sub(x_min)) as f64 / span as f64 }
        };
        let y_of = |y: f64| TOP + plot_h * (1.0 - (y / y_max).clamp(0.0, 1.0));
        out.push_str("<g class=\"axes\">");
        for i in 0..=GRIDLINES {
            let value = y_max * f64::from(i) / f64::from(GRIDLINES);
            let y = y_of(value);
            let _ = write!(
                out,
                "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
                 <text class=\"y-label\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                WIDTH - RIGHT,
                LEFT - 4.0,
                y + 3.5,
                escape(&(self.format_y)(value))
            );
        }
        let label_y = HEIGHT - 6.0;
        let _ = write!(
            out,
            "<text class=\"x-label\" x=\"{LEFT}\" y=\"{label_y}\">{}</text>\
             <text class=\"x-label\" x=\"{}\" y=\"{label_y}\" text-anchor=\"end\">{} UTC</text></g>",
            clock(x_min),
            WIDTH - RIGHT,
            clock(x_max)
        );
        // Markers under the lines, so the data stays on top.
        for marker in self.markers.iter().filter(|m| (x_min..=x_max).contains(&m.at_ms)) {
            let x = x_of(marker.at_ms);
            let label = escape(&marker.label);
            let _ = write!(
                out,
                "<g class=\"marker\" data-marker=\"{label}\"><line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{TOP}\" y2=\"{}\" \
                 stroke=\"#888\" stroke-width=\"1\" stroke-dasharray=\"2 2\"/>\
                 <text class=\"marker-label\" x=\"{:.1}\" y=\"{}\" font-size=\"9\">{label}</text></g>",
                HEIGHT - BOTTOM,
                x + 2.0,
                TOP + 8.0
            );
        }
        for series in self.series {
            let name = escape(&series.name);
            let count = series.points.iter().filter(|p| p.1.is_some()).count();
            let dash = if series.dashed { " stroke-dasharray=\"4 3\"" } else { "" };
            let _ = write!(out, "<g class=\"series\" data-series=\"{name}\" data-points=\"{count}\">");
            let points = defined(&series.points);
            if !points.is_empty() {
                let coords: Vec<String> =
                    points.iter().map(|&(x, y)| format!("{:.1},{:.1}", x_of(x), y_of(y))).collect();
                let _ = write!(
                    out,
                    "<polyline data-cohort=\"{name}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.8\"{dash} points=\"{}\"/>",
                    series.colour,
                    coords.join(" ")
                );
            }
            // Markers while they stay readable; a reference line needs none.
            if !series.dashed && points.len() <= MAX_MARKERS {
                for &(x, y) in &points {
                    let _ = write!(
                        out,
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"{}\"/>",
                        x_of(x),
                        y_of(y),
                        series.colour
                    );
                }
            }
            out.push_str("</g>");
        }
        out.push_str("</svg>");
        out
    }

    /// The legend under a chart (HTML, so it wraps).
    pub fn legend(&self) -> String {
        let mut out = String::from("<div class=\"legend\">");
        for series in self.series {
            let style = if series.dashed { "dashed" } else { "solid" };
            let _ = write!(
                out,
                "<span><i class=\"{style}\" style=\"border-color:{}\"></i>{}</span>",
                series.colour,
                escape(&series.name)
            );
        }
        out.push_str("</div>");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, points: &[(u64, Option<f64>)]) -> Series {
        Series { name: name.into(), colour: "#000", dashed: false, points: points.to_vec() }
    }

    fn percent(v: f64) -> String {
        format!("{v:.1} %")
    }

    #[test]
    fn nice_ceilings_are_round() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(f64::NAN), 1.0);
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(1.3), 2.0);
        assert_eq!(nice_ceiling(2.2), 2.5);
        assert_eq!(nice_ceiling(37.0), 50.0);
        assert_eq!(nice_ceiling(51.0), 100.0);
        assert_eq!(nice_ceiling(0.0042), 0.005);
    }

    #[test]
    fn missing_values_are_left_out() {
        let points = [(1, Some(1.0)), (2, None), (3, Some(2.0)), (4, Some(f64::NAN)), (5, Some(3.0))];
        assert_eq!(defined(&points), vec![(1, 1.0), (3, 2.0), (5, 3.0)]);
        assert!(defined(&[(1, None)]).is_empty());
    }

    #[test]
    fn an_empty_chart_says_so() {
        let chart =
            Chart { markers: &[], id: "c", title: "error rate", series: &[series("canary", &[])], format_y: percent };
        let svg = chart.render();
        assert!(svg.contains("no checks yet") && !svg.contains("polyline"), "{svg}");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn each_cohort_gets_tagged_polylines_scaled_into_the_plot() {
        let all = [
            series("canary", &[(0, Some(0.0)), (1_000, Some(4.0)), (2_000, Some(2.0))]),
            series("control", &[(0, Some(1.0)), (1_000, None), (2_000, Some(1.0))]),
        ];
        let chart = Chart { markers: &[], id: "chart-x", title: "error rate", series: &all, format_y: percent };
        let svg = chart.render();
        assert!(svg.contains("<g class=\"series\" data-series=\"canary\" data-points=\"3\">"), "{svg}");
        assert!(svg.contains("data-series=\"control\" data-points=\"2\""), "{svg}");
        // canary: x from LEFT to WIDTH-RIGHT, y = 4 is the top (y max 5 → 4/5 of the height).
        assert!(svg.contains("points=\"56.0,158.0 264.0,39.6 472.0,98.8\""), "{svg}");
        // control's missing value is left out: one line through the two it has.
        assert!(svg.contains("<polyline data-cohort=\"control\" fill=\"none\" stroke=\"#000\" stroke-width=\"1.8\" points=\"56.0,128.4 472.0,128.4\"/>"), "{svg}");
        assert_eq!(svg.matches("<circle").count(), 5, "a marker per value");
        // Gridline labels from 0 to the nice maximum, and the time span.
        assert!(svg.contains(">0.0 %</text>") && svg.contains(">5.0 %</text>"), "{svg}");
        assert!(svg.contains(">00:00:00</text>") && svg.contains(">00:00:02 UTC</text>"), "{svg}");
    }

    #[test]
    fn markers_in_the_time_span_are_drawn_with_their_labels() {
        let series = [series("canary", &[(1_000, Some(1.0)), (5_000, Some(2.0))])];
        let markers = [
            Marker { at_ms: 3_000, label: "25 %".into() },
            Marker { at_ms: 9_000, label: "out of span".into() },
            Marker { at_ms: 5_000, label: "<rolled back>".into() },
        ];
        let svg = Chart { id: "c", title: "t", series: &series, markers: &markers, format_y: percent }.render();
        assert_eq!(svg.matches("class=\"marker\"").count(), 2, "{svg}");
        assert!(svg.contains("data-marker=\"25 %\"") && svg.contains("&lt;rolled back&gt;"), "{svg}");
        assert!(!svg.contains("out of span"), "{svg}");
    }

    #[test]
    fn names_are_escaped() {
        let all = [series("<b>\"x\"", &[(5, Some(1.0))])];
        let chart = Chart { markers: &[], id: "a\"b", title: "<t>", series: &all, format_y: percent };
        let svg = chart.render() + &chart.legend();
        assert!(!svg.contains("<b>") && !svg.contains("<t>") && !svg.contains("a\"b"), "{svg}");
        assert!(svg.contains("&lt;b&gt;&quot;x&quot;"), "{svg}");
        // A single point is centred.
        assert!(svg.contains("points=\"264.0,10.0\""), "{svg}");
    }

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(0), "00:00:00");
        assert_eq!(clock(86_400_000 + 3_723_000 + 999), "01:02:03");
    }
}
