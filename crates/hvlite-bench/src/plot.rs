//! SVG plots drawn with plotters' SVG backend into a string (inlined in the HTML page).

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::stats::{Summary, fmt_sig};

#[derive(Debug, thiserror::Error)]
#[error("drawing the plot {plot:?}: {message}")]
pub struct PlotError {
    plot: String,
    message: String,
}

const WIDTH: u32 = 760;
const HEIGHT: u32 = 340;
const PALETTE: [RGBColor; 7] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x7f, 0x7f, 0x7f),
];

/// One system's bar: its summary, or the word shown instead (e.g. "failed").
pub struct Bar<'a> {
    pub label: &'a str,
    pub value: Result<Summary, &'a str>,
    /// Ratio to the baseline system's median, printed above the bar.
    pub ratio: Option<f64>,
}

/// One system's line: (x, summary) points.
pub struct Line<'a> {
    pub label: &'a str,
    /// The system's place among those that ran: its colour, the same as its bar's.
    pub color: usize,
    pub points: Vec<(f64, Summary)>,
}

fn err(plot: &str) -> impl Fn(String) -> PlotError + '_ {
    move |message| PlotError {
        plot: plot.to_string(),
        message,
    }
}

/// Axis range for positive values spread over orders of magnitude: a log axis when the
/// largest value is over 30 times the smallest, so a 50 ms bar stays visible next to 20 s.
fn y_range(lo: f64, hi: f64) -> (f64, f64, bool) {
    // A zero (or negative) value cannot sit on a log axis: such plots stay linear.
    if lo > 0.0 && hi / lo > 30.0 {
        (lo / 2.0, hi * 2.0, true)
    } else {
        (0.0, hi * 1.15, false)
    }
}

/// Bars (medians) with min-max whiskers and the first-to-third quartile as a box.
pub fn bars(title: &str, unit: &str, bars: &[Bar]) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        draw_bars(&root, title, unit, bars).map_err(err(title))?;
        root.present().map_err(|e| err(title)(e.to_string()))?;
    }
    Ok(svg)
}

fn draw_bars(
    root: &DrawingArea<SVGBackend, Shift>,
    title: &str,
    unit: &str,
    bars: &[Bar],
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let ok: Vec<&Summary> = bars.iter().filter_map(|b| b.value.as_ref().ok()).collect();
    let lo = ok.iter().map(|s| s.min).fold(f64::INFINITY, f64::min);
    let hi = ok.iter().map(|s| s.max).fold(0.0, f64::max);
    let (lo, hi) = if ok.is_empty() { (1.0, 1.0) } else { (lo, hi) };
    let (y0, y1, log) = y_range(lo, hi);
    let n = bars.len().max(1) as f64;
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70);
    let labels: Vec<&str> = bars.iter().map(|b| b.label).collect();
    let x_fmt = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 0.01 && i >= 0.0 {
            labels.get(i as usize).copied().unwrap_or("").to_string()
        } else {
            String::new()
        }
    };
    let y_desc = format!("{unit}{}", if log { " (log scale)" } else { "" });
    let floor = if log { y0 } else { 0.0 };
    // Labels sit centred just above their anchor (the top whisker, or the axis).
    let above =
        TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(bars.len() * 2 + 1)
                .x_label_formatter(&x_fmt)
                .y_desc(y_desc.as_str())
                .draw()
                .map_err(|e| e.to_string())?;
            for (i, bar) in bars.iter().enumerate() {
                let x = i as f64;
                let color = PALETTE[i % PALETTE.len()];
                match &bar.value {
                    Ok(s) => {
                        let rect = Rectangle::new(
                            [(x - 0.3, floor), (x + 0.3, s.median)],
                            color.mix(0.6).filled(),
                        );
                        let quart = Rectangle::new(
                            [(x - 0.12, s.q1), (x + 0.12, s.q3)],
                            BLACK.stroke_width(1),
                        );
                        let whisker = ErrorBar::new_vertical(
                            x,
                            s.min,
                            s.median,
                            s.max,
                            BLACK.stroke_width(1),
                            12,
                        );
                        chart.draw_series([rect]).map_err(|e| e.to_string())?;
                        chart.draw_series([quart]).map_err(|e| e.to_string())?;
                        chart.draw_series([whisker]).map_err(|e| e.to_string())?;
                        let mut text = fmt_sig(s.median);
                        if let Some(r) = bar.ratio {
                            text.push_str(&format!(" ({}x)", fmt_sig(r)));
                        }
                        let label =
                            EmptyElement::at((x, s.max)) + Text::new(text, (0, -8), above.clone());
                        chart.draw_series([label]).map_err(|e| e.to_string())?;
                    }
                    Err(word) => {
                        let label = Text::new(word.to_string(), (x, floor), above.color(&RED));
                        chart.draw_series([label]).map_err(|e| e.to_string())?;
                    }
                }
            }
        }};
    }
    if log {
        draw!(
            builder
                .build_cartesian_2d(-0.5..n - 0.5, (y0..y1).log_scale())
                .map_err(|e| e.to_string())?
        );
    } else {
        draw!(
            builder
                .build_cartesian_2d(-0.5..n - 0.5, y0..y1)
                .map_err(|e| e.to_string())?
        );
    }
    Ok(())
}

/// One line per system through the medians, with min-max whiskers at each point.
pub fn lines(title: &str, unit: &str, x_label: &str, lines: &[Line]) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        draw_lines(&root, title, unit, x_label, lines).map_err(err(title))?;
        root.present().map_err(|e| err(title)(e.to_string()))?;
    }
    Ok(svg)
}

fn draw_lines(
    root: &DrawingArea<SVGBackend, Shift>,
    title: &str,
    unit: &str,
    x_label: &str,
    lines: &[Line],
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let all = || lines.iter().flat_map(|l| l.points.iter());
    let x1 = all().map(|(x, _)| *x).fold(1.0, f64::max);
    let lo = all().map(|(_, s)| s.min).fold(f64::INFINITY, f64::min);
    let hi = all().map(|(_, s)| s.max).fold(0.0, f64::max);
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (1.0, 1.0) };
    let (y0, y1, log) = y_range(lo, hi);
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70);
    let y_desc = format!("{unit}{}", if log { " (log scale)" } else { "" });
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_desc.as_str())
                .draw()
                .map_err(|e| e.to_string())?;
            for line in lines {
                let color = PALETTE[line.color % PALETTE.len()];
                let medians: Vec<(f64, f64)> =
                    line.points.iter().map(|(x, s)| (*x, s.median)).collect();
                chart
                    .draw_series(LineSeries::new(medians.clone(), color.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(line.label)
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(medians.iter().map(|p| Circle::new(*p, 3, color.filled())))
                    .map_err(|e| e.to_string())?;
                chart
                    .draw_series(line.points.iter().map(|(x, s)| {
                        ErrorBar::new_vertical(*x, s.min, s.median, s.max, color.stroke_width(1), 8)
                    }))
                    .map_err(|e| e.to_string())?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }};
    }
    if log {
        draw!(
            builder
                .build_cartesian_2d(0.0..x1 * 1.05, (y0..y1).log_scale())
                .map_err(|e| e.to_string())?
        );
    } else {
        draw!(
            builder
                .build_cartesian_2d(0.0..x1 * 1.05, y0..y1)
                .map_err(|e| e.to_string())?
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::summarize;

    #[test]
    fn bars_draw_every_system_and_the_failed_word() {
        let a = summarize(&[0.04, 0.05, 0.06]).unwrap();
        let b = summarize(&[20.0, 21.0]).unwrap();
        let svg = bars(
            "start & exit",
            "s",
            &[
                Bar {
                    label: "runc",
                    value: Ok(a),
                    ratio: Some(1.0),
                },
                Bar {
                    label: "hvlite",
                    value: Ok(b),
                    ratio: Some(420.0),
                },
                Bar {
                    label: "crun",
                    value: Err("failed"),
                    ratio: None,
                },
            ],
        )
        .unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for text in [
            "runc",
            "hvlite",
            "crun",
            "failed",
            "420x",
            "log scale",
            "start &amp; exit",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
    }

    #[test]
    fn close_values_use_a_linear_axis() {
        let a = summarize(&[1.0]).unwrap();
        let svg = bars(
            "t",
            "ms",
            &[Bar {
                label: "x",
                value: Ok(a),
                ratio: None,
            }],
        )
        .unwrap();
        assert!(!svg.contains("log scale"));
    }

    #[test]
    fn lines_have_a_legend_entry_per_system() {
        let s = |v: f64| summarize(&[v]).unwrap();
        let svg = lines(
            "density",
            "MiB",
            "instances",
            &[
                Line {
                    label: "runc",
                    color: 0,
                    points: vec![(1.0, s(2.0)), (5.0, s(9.0))],
                },
                Line {
                    label: "qemu",
                    color: 1,
                    points: vec![(1.0, s(30.0)), (5.0, s(150.0))],
                },
            ],
        )
        .unwrap();
        for text in ["runc", "qemu", "instances", "MiB"] {
            assert!(svg.contains(text), "{text} missing");
        }
    }
}
