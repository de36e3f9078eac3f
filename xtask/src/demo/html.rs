//! `report.html`: one self-contained page (inline SVG charts drawn by plotters, no script, no
//! external file) and `overview.svg`, the comparison chart the README shows.

use super::report::{RunJson, Summary};
use super::{Run, Scenario};
use crate::Result;
use degrade_breaker::State as BreakerState;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

type Points = Vec<(f64, f64)>;
type TallyField = fn(&super::load::Tally) -> u64;

fn tally_shed(t: &super::load::Tally) -> u64 {
    t.shed
}

/// Colours by priority, most important first.
const PRIORITY_COLORS: [RGBColor; 5] = [
    RGBColor(200, 30, 45),
    RGBColor(240, 130, 20),
    RGBColor(40, 110, 200),
    RGBColor(60, 160, 80),
    RGBColor(150, 150, 150),
];
const PRIORITY_NAMES: [&str; 5] = ["critical", "high", "normal", "low", "background"];
pub(crate) const RUN_COLORS: [RGBColor; 3] = [
    RGBColor(40, 110, 200),
    RGBColor(200, 30, 45),
    RGBColor(240, 130, 20),
];
const FONT: &str = "sans-serif";

fn err(e: impl std::fmt::Debug) -> String {
    format!("cannot draw a chart: {e:?}")
}

/// One series of a line chart.
pub(crate) struct Line {
    name: String,
    color: RGBColor,
    points: Points,
}

impl Line {
    pub(crate) fn new(name: &str, color: RGBColor, points: Points) -> Self {
        Self {
            name: name.to_owned(),
            color,
            points,
        }
    }
}

/// Two timeline charts, one above the other, on one SVG: each `(title, y unit, lines)`.
pub(crate) fn two_line_charts(
    size: (u32, u32),
    top: (&str, &str, &[Line]),
    bottom: (&str, &str, &[Line]),
    scenario: &Scenario,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        let (upper, lower) = root.split_vertically(size.1 / 2);
        draw_lines(&upper, top.0, top.1, scenario, top.2, None)?;
        draw_lines(&lower, bottom.0, bottom.1, scenario, bottom.2, None)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// A timeline chart: lines over seconds, with the phases marked.
fn line_chart(
    title: &str,
    y_desc: &str,
    scenario: &Scenario,
    lines: &[Line],
    y_max: Option<f64>,
    size: (u32, u32),
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        draw_lines(&root, title, y_desc, scenario, lines, y_max)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

type TimeChart<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// The frame every timeline chart shares: white, a caption, seconds across, `0..top` up, the
/// mesh and the phase marks.
fn timeline_frame<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    scenario: &Scenario,
    top: f64,
) -> Result<TimeChart<'a, DB>> {
    area.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(52)
        .build_cartesian_2d(0f64..scenario.total() as f64, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(y_desc)
        .light_line_style(RGBColor(240, 240, 240))
        .draw()
        .map_err(err)?;
    phase_marks(&mut chart, scenario, top)?;
    Ok(chart)
}

/// The legend box, at `position`.
fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut TimeChart<'a, DB>,
    position: SeriesLabelPosition,
) -> Result {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .label_font((FONT, 12))
        .draw()
        .map_err(err)
}

fn draw_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    scenario: &Scenario,
    lines: &[Line],
    y_max: Option<f64>,
) -> Result {
    let top = y_max.unwrap_or_else(|| {
        lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .fold(1.0, f64::max)
            * 1.1
    });
    let mut chart = timeline_frame(area, title, y_desc, scenario, top)?;
    for line in lines {
        let color = line.color;
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(line.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
    }
    legend(&mut chart, SeriesLabelPosition::MiddleLeft)
}

fn phase_marks<DB: DrawingBackend>(
    chart: &mut TimeChart<'_, DB>,
    scenario: &Scenario,
    top: f64,
) -> Result {
    let style = RGBColor(170, 170, 170).stroke_width(1);
    for phase in &scenario.phases {
        let x = phase.start as f64;
        if phase.start > 0 {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x, 0.0), (x, top)],
                    style,
                )))
                .map_err(err)?;
        }
        chart
            .draw_series(std::iter::once(Text::new(
                phase.name.to_owned(),
                (x + 0.2, top * 0.98),
                (FONT, 11).into_font().color(&RGBColor(110, 110, 110)),
            )))
            .map_err(err)?;
    }
    Ok(())
}

/// Admitted (200) by priority, stacked, with the offered load on top.
fn traffic_chart(run: &RunJson, scenario: &Scenario) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 320)).into_drawing_area();
        let offered: Points = run
            .timeline
            .iter()
            .map(|s| (s.t_s as f64 + 0.5, s.total.offered as f64))
            .collect();
        let top = offered.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
        let title = format!(
            "{}: offered, and answered 200 by priority (stacked)",
            run.name
        );
        let mut chart = timeline_frame(&root, &title, "requests / s", scenario, top)?;
        // Stacks from the bottom: critical first. Each area is drawn from its cumulative top
        // down to zero, largest first, so the smaller ones paint over it.
        let mut cumulative = vec![0.0; run.timeline.len()];
        let mut stacks = Vec::new();
        for i in 0..5 {
            for (slot, s) in cumulative.iter_mut().zip(&run.timeline) {
                *slot += s.ok_by_priority[i] as f64;
            }
            stacks.push(cumulative.clone());
        }
        for i in (0..5).rev() {
            let color = PRIORITY_COLORS[i];
            let points: Points = run
                .timeline
                .iter()
                .zip(&stacks[i])
                .map(|(s, y)| (s.t_s as f64 + 0.5, *y))
                .collect();
            chart
                .draw_series(AreaSeries::new(points, 0.0, color.mix(0.75)).border_style(color))
                .map_err(err)?
                .label(format!("200 {}", PRIORITY_NAMES[i]))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .draw_series(LineSeries::new(offered, BLACK.stroke_width(2)))
            .map_err(err)?
            .label("offered")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], BLACK.stroke_width(2)));
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn per_second(run: &RunJson, f: impl Fn(&super::report::SecondJson) -> Option<f64>) -> Points {
    run.timeline
        .iter()
        .filter_map(|s| f(s).map(|y| (s.t_s as f64 + 0.5, y)))
        .collect()
}

/// A step line through control samples.
fn steps(run: &Run, f: impl Fn(&super::ControlSample) -> Option<f64>) -> Points {
    let mut points: Points = Vec::new();
    for s in &run.control {
        let Some(y) = f(s) else { continue };
        if let Some(&(_, last)) = points.last()
            && last != y
        {
            points.push((s.t, last));
        }
        points.push((s.t, y));
    }
    points
}

fn breaker_value(state: BreakerState) -> f64 {
    match state {
        BreakerState::Open | BreakerState::ForcedOpen => 2.0,
        BreakerState::HalfOpen => 1.0,
        _ => 0.0,
    }
}

/// The comparison of the runs over the overload part (warm-up, ramp, 3x hold): p99 and critical
/// success per second.
fn comparison(summary: &Summary, scenario: &Scenario, size: (u32, u32)) -> Result<String> {
    let end = scenario.phases.get(2).map_or(scenario.total(), |p| p.end) as f64;
    let scenario = &Scenario {
        phases: scenario.phases[..3.min(scenario.phases.len())].to_vec(),
        ..scenario.clone()
    };
    let p99: Vec<Line> = summary
        .runs
        .iter()
        .zip(RUN_COLORS)
        .map(|(run, color)| Line {
            name: run.name.to_owned(),
            color,
            points: per_second(run, |s| s.p99_ms)
                .into_iter()
                .filter(|p| p.0 < end)
                .collect(),
        })
        .collect();
    let critical: Vec<Line> = summary
        .runs
        .iter()
        .zip(RUN_COLORS)
        .map(|(run, color)| Line {
            name: run.name.to_owned(),
            color,
            points: per_second(run, |s| {
                let offered = s.offered_by_priority[0];
                (offered > 0).then(|| 100.0 * s.ok_by_priority[0] as f64 / offered as f64)
            })
            .into_iter()
            .filter(|p| p.0 < end)
            .collect(),
        })
        .collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (left, right) = root.split_horizontally(size.0 / 2);
        // Unprotected latency grows a hundredfold: clip the axis at ten times the best
        // unloaded p99 so the protected lines stay readable, and say so in the legend.
        let unloaded = summary
            .checks
            .iter()
            .filter_map(|c| c.unloaded_p99_ms)
            .fold(f64::INFINITY, f64::min);
        let cap = if unloaded.is_finite() {
            unloaded * 10.0
        } else {
            1_000.0
        };
        let p99: Vec<Line> = p99
            .into_iter()
            .map(|mut line| {
                if line.points.iter().any(|p| p.1 > cap) {
                    line.name = format!("{} (clipped at {cap:.0} ms)", line.name);
                    line.points.iter_mut().for_each(|p| p.1 = p.1.min(cap));
                }
                line
            })
            .collect();
        draw_lines(
            &left,
            "p99 of 200 responses (ms), 0.6x -> 3x capacity",
            "ms",
            scenario,
            &p99,
            Some(cap * 1.15),
        )?;
        draw_lines(
            &right,
            "critical requests answered 200 (%)",
            "%",
            scenario,
            &critical,
            Some(110.0),
        )?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Writes `report.html` and `overview.svg` under `dir`.
pub(crate) fn write(dir: &Path, summary: &Summary, runs: &[Run]) -> Result<Vec<PathBuf>> {
    let main = &runs[0];
    let main_json = &summary.runs[0];
    let scenario = &main.scenario;
    let comparison_scenario = runs.get(1).map_or(scenario, |r| &r.scenario);

    let overview = comparison(summary, comparison_scenario, (1100, 360))?;
    let traffic = traffic_chart(main_json, scenario)?;
    let rejections = line_chart(
        &format!("{}: refused and failed, by reason", main_json.name),
        "requests / s",
        scenario,
        &[
            (
                "shed by level",
                RGBColor(120, 60, 170),
                tally_shed as TallyField,
            ),
            ("429 rate limit", RGBColor(240, 130, 20), |t| t.rate_limited),
            ("503 breaker open", RGBColor(200, 30, 45), |t| {
                t.circuit_open
            }),
            ("backend errors", RGBColor(90, 90, 90), |t| t.errors),
        ]
        .into_iter()
        .map(|(name, color, f)| Line {
            name: name.to_owned(),
            color,
            points: per_second(main_json, |s| Some(f(&s.total) as f64)),
        })
        .collect::<Vec<_>>(),
        None,
        (960, 280),
    )?;
    let latency = line_chart(
        &format!("{}: latency of 200 responses", main_json.name),
        "ms",
        scenario,
        &[
            Line {
                name: "p50".to_owned(),
                color: RGBColor(40, 110, 200),
                points: per_second(main_json, |s| s.p50_ms),
            },
            Line {
                name: "p99".to_owned(),
                color: RGBColor(200, 30, 45),
                points: per_second(main_json, |s| s.p99_ms),
            },
        ],
        None,
        (960, 260),
    )?;
    let limit = line_chart(
        "adaptive limit (requests in the backend at once) and requests in the backend",
        "",
        scenario,
        &[
            Line {
                name: "limit".to_owned(),
                color: RGBColor(40, 110, 200),
                points: steps(main, |s| s.limit.map(f64::from)),
            },
            Line {
                name: "in backend".to_owned(),
                color: RGBColor(120, 120, 120),
                points: steps(main, |s| Some(s.in_system as f64)),
            },
        ],
        None,
        (960, 240),
    )?;
    let level = line_chart(
        "level (0 normal .. 4 emergency) and breaker (0 closed, 1 half-open, 2 open)",
        "",
        scenario,
        &[
            Line {
                name: "level".to_owned(),
                color: RGBColor(120, 60, 170),
                points: steps(main, |s| Some(s.level.index() as f64)),
            },
            Line {
                name: "breaker".to_owned(),
                color: RGBColor(200, 30, 45),
                points: steps(main, |s| s.breaker.map(breaker_value)),
            },
        ],
        Some(4.6),
        (960, 240),
    )?;
    let canary = line_chart(
        "canary weight (%) and the candidate's answers (per second)",
        "",
        scenario,
        &[
            Line {
                name: "weight %".to_owned(),
                color: RGBColor(40, 110, 200),
                points: steps(main, |s| s.canary_percent),
            },
            Line {
                name: "v2 errors / s".to_owned(),
                color: RGBColor(200, 30, 45),
                points: per_second(main_json, |s| Some(s.v2[1] as f64)),
            },
        ],
        Some(110.0),
        (960, 240),
    )?;

    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let svg_path = dir.join("overview.svg");
    std::fs::write(&svg_path, &overview)
        .map_err(|e| format!("cannot write {}: {e}", svg_path.display()))?;

    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>degrade demo report</title>\
         <style>body{{font-family:sans-serif;max-width:1140px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:0.5em 0 1.5em}}td,th{{border:1px solid #ccc;\
         padding:3px 8px;text-align:right}}th{{background:#f4f4f4}}td:first-child,th:first-child\
         {{text-align:left}}.ok{{color:#1a7f37;font-weight:bold}}.no{{color:#c62828;\
         font-weight:bold}}svg{{display:block;margin:0.5em 0}}</style></head><body>"
    );
    let _ = write!(
        html,
        "<h1>degrade demo</h1><p>A real axum service on 127.0.0.1 whose backend serves {} requests \
         at a time, {} ms each (capacity {:.0} req/s), driven by an open-loop Poisson load \
         generator. The protected run goes through every phase; the same warm-up, ramp and 3x \
         overload are then replayed against the backend unprotected and behind tower's \
         ConcurrencyLimit + LoadShed.</p>",
        super::service::permits(),
        super::service::service_time().as_millis(),
        super::service::capacity()
    );
    let _ = write!(
        html,
        "<h2>At 3x overload</h2><table><tr><th>run</th><th>unloaded p99</th><th>3x p99</th>\
         <th>ratio</th><th>critical answered</th><th>goodput (% of capacity)</th><th>p99 &le; 2x \
         and critical &ge; 99.9 %</th></tr>"
    );
    for c in &summary.checks {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td class=\"{}\">{}</td></tr>",
            c.run,
            opt_ms(c.unloaded_p99_ms),
            opt_ms(c.overload_p99_ms),
            c.p99_ratio
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x")),
            c.critical_success_percent
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.2} %")),
            c.goodput_percent_of_capacity,
            if c.meets_bar { "ok" } else { "no" },
            if c.meets_bar { "yes" } else { "no" },
        );
    }
    html.push_str("</table>");
    html.push_str(&overview);
    html.push_str("<h2>The protected run</h2>");
    for chart in [&traffic, &rejections, &latency, &limit, &level, &canary] {
        html.push_str(chart);
    }
    for run in &summary.runs {
        phase_table(&mut html, run);
    }
    let _ = write!(
        html,
        "<p>Figures by send time; latency from send to the last body byte of 200 responses. \
         The raw data is in <code>summary.json</code> next to this file.</p></body></html>"
    );
    let html_path = dir.join("report.html");
    std::fs::write(&html_path, html)
        .map_err(|e| format!("cannot write {}: {e}", html_path.display()))?;
    Ok(vec![html_path, svg_path])
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"))
}

fn phase_table(html: &mut String, run: &RunJson) {
    let _ = write!(
        html,
        "<h3>{}</h3><table><tr><th>phase</th><th>seconds</th><th>offered</th><th>200</th>\
         <th>shed</th><th>429</th><th>breaker 503</th><th>overloaded 503</th><th>errors</th>\
         <th>timeouts</th><th>p50</th><th>p99</th><th>critical</th><th>highest level</th></tr>",
        run.name
    );
    for p in &run.phases {
        let t = &p.total;
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}-{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            p.name,
            p.start_s,
            p.end_s,
            t.offered,
            t.ok,
            t.shed,
            t.rate_limited,
            t.circuit_open,
            t.overloaded,
            t.errors,
            t.timeouts + t.dropped,
            opt_ms(p.p50_ms),
            opt_ms(p.p99_ms),
            p.critical_success_percent
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.2} %")),
            p.highest_level.as_str(),
        );
    }
    html.push_str("</table>");
    let events: Vec<String> = run
        .canary
        .iter()
        .filter(|c| c.outcome.is_some())
        .map(|c| {
            format!(
                "canary {:?} {} at {:.1} s ({})",
                c.candidate,
                c.outcome.unwrap_or("-"),
                c.t,
                c.reason
            )
        })
        .chain(
            run.breaker
                .iter()
                .map(|b| format!("breaker {:?} at {:.1} s", b.to, b.t)),
        )
        .collect();
    if !events.is_empty() {
        let _ = write!(html, "<p>{}</p>", events.join("; "));
    }
    let a = &run.accounting;
    let _ = write!(
        html,
        "<p>Accounting: {} {}</p>",
        if a.client_ok && a.layers_ok {
            "<span class=\"ok\">exact</span>"
        } else {
            "<span class=\"no\">MISMATCH</span>"
        },
        a.lines.join("; ")
    );
}
