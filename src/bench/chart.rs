//! `gtstore-bench chart KIND IN.csv OUT.svg`: bar charts from the CSV files
//! the runs wrote, drawn with plotters' SVG backend.
//!
//! - `throughput`: one bar per row of a run CSV (`--csv`), ops/s against
//!   the replicas, each bar labelled with its ops/s and p99 latency.
//! - `balance`: one bar per row of a node CSV (`--node-csv`), keys per
//!   node, with the mean as a dashed line; also prints a text histogram on
//!   standard output.
//! - `peers`: one horizontal bar per row of `make bench-peers`'s
//!   `vs-peers.csv` (`system,nodes,replicas,ops_per_s,p50_ms,p99_ms`),
//!   ops/s, each bar named by its system and shape and labelled with its
//!   ops/s and p99 latency.

use std::collections::HashMap;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::cli::{Exit, EX_DATAERR, EX_OSERR};

const USAGE: &str = "usage: gtstore-bench chart throughput|balance|peers IN.csv OUT.svg";
const WIDTH: u32 = 900;
const HEIGHT: u32 = 560;
const BAR: RGBColor = RGBColor(0x3b, 0x6e, 0xa8);
const MEAN: RGBColor = RGBColor(0xc0, 0x39, 0x2b);
/// The bars of systems other than GTStore in the `peers` chart.
const PEER: RGBColor = RGBColor(0x95, 0x9c, 0xa3);

/// A CSV file read as a header and rows of fields (no quoting: the bench writes none).
struct Csv {
    cols: HashMap<String, usize>,
    rows: Vec<Vec<String>>,
}

impl Csv {
    fn read(path: &Path) -> Result<Csv, Exit> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Exit::new(EX_DATAERR, format!("{}: {e}", path.display())))?;
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header = lines.next().ok_or_else(|| Exit::new(EX_DATAERR, format!("{}: empty", path.display())))?;
        let cols = header.split(',').enumerate().map(|(i, c)| (c.trim().to_string(), i)).collect();
        let rows: Vec<Vec<String>> = lines.map(|l| l.split(',').map(|f| f.trim().to_string()).collect()).collect();
        if rows.is_empty() {
            return Err(Exit::new(EX_DATAERR, format!("{}: no data rows", path.display())));
        }
        Ok(Csv { cols, rows })
    }

    /// Column `name` of every row.
    fn column(&self, path: &Path, name: &str) -> Result<Vec<String>, Exit> {
        let i = *self
            .cols
            .get(name)
            .ok_or_else(|| Exit::new(EX_DATAERR, format!("{}: no column '{name}'", path.display())))?;
        Ok(self.rows.iter().map(|r| r.get(i).cloned().unwrap_or_default()).collect())
    }

    /// Column `name` of every row, as numbers.
    fn numbers(&self, path: &Path, name: &str) -> Result<Vec<f64>, Exit> {
        self.column(path, name)?
            .iter()
            .enumerate()
            .map(|(row, v)| {
                v.parse::<f64>().map_err(|_| {
                    Exit::new(EX_DATAERR, format!("{}: row {}: {name} '{v}' is not a number", path.display(), row + 1))
                })
            })
            .collect()
    }
}

/// Runs `chart ARGS`; returns the exit status.
pub fn main(args: &[String]) -> Result<i32, Exit> {
    let [kind, input, output] = args else {
        return Err(Exit::usage(USAGE));
    };
    let (input, output) = (Path::new(input), Path::new(output));
    match kind.as_str() {
        "throughput" => throughput(input, output)?,
        "balance" => balance(input, output)?,
        "peers" => peers(input, output)?,
        other => return Err(Exit::usage(format!("unknown chart '{other}'; {USAGE}"))),
    }
    Ok(0)
}

/// Thousands separators: 73800 → "73,800".
fn grouped(v: f64) -> String {
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn draw_err(out: &Path, e: impl std::fmt::Display) -> Exit {
    Exit::new(EX_OSERR, format!("{}: cannot draw the chart: {e}", out.display()))
}

/// One labelled bar.
struct Bar {
    name: String,
    value: f64,
    /// Lines written above the bar.
    notes: Vec<String>,
}

/// Draws a vertical bar chart of `bars`, with an optional dashed reference line.
fn bar_chart(
    out: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    bars: &[Bar],
    reference: Option<(f64, String)>,
) -> Result<(), Exit> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Exit::new(EX_OSERR, format!("{}: {e}", dir.display())))?;
    }
    let n = bars.len() as i32;
    let ymax = bars.iter().map(|b| b.value).fold(0.0, f64::max).max(1.0) * 1.25;
    let root = SVGBackend::new(out, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(out, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..ymax)
        .map_err(|e| draw_err(out, e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .x_desc(x_desc)
        .y_desc(y_desc)
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 14))
        .x_labels(bars.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                bars.get(*i as usize).map(|b| b.name.clone()).unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .y_label_formatter(&|v| grouped(*v))
        .draw()
        .map_err(|e| draw_err(out, e))?;
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .style(BAR.filled())
                .margin(30)
                .data(bars.iter().enumerate().map(|(i, b)| (i as i32, b.value))),
        )
        .map_err(|e| draw_err(out, e))?;
    let note_style = TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    for (i, b) in bars.iter().enumerate() {
        let (x, _) = chart.backend_coord(&(SegmentValue::CenterOf(i as i32), b.value));
        let (_, y) = chart.backend_coord(&(SegmentValue::CenterOf(i as i32), b.value));
        for (k, note) in b.notes.iter().rev().enumerate() {
            root.draw(&Text::new(note.clone(), (x, y - 6 - 18 * k as i32), note_style.clone()))
                .map_err(|e| draw_err(out, e))?;
        }
    }
    if let Some((v, text)) = reference {
        let (x0, y) = chart.backend_coord(&(SegmentValue::Exact(0), v));
        let (x1, _) = chart.backend_coord(&(SegmentValue::Last, v));
        let mut x = x0;
        while x < x1 {
            let end = (x + 8).min(x1);
            root.draw(&PathElement::new(vec![(x, y), (end, y)], MEAN.stroke_width(2))).map_err(|e| draw_err(out, e))?;
            x += 14;
        }
        // The legend sits in the empty top right corner, clear of the bar labels.
        let (_, top) = chart.backend_coord(&(SegmentValue::Last, ymax));
        let style =
            TextStyle::from(("sans-serif", 14).into_font()).color(&MEAN).pos(Pos::new(HPos::Right, VPos::Center));
        let ly = top + 14;
        for dash in [150, 132] {
            root.draw(&PathElement::new(vec![(x1 - dash, ly), (x1 - dash + 12, ly)], MEAN.stroke_width(2)))
                .map_err(|e| draw_err(out, e))?;
        }
        root.draw(&Text::new(text, (x1 - 8, ly), style)).map_err(|e| draw_err(out, e))?;
    }
    root.present().map_err(|e| draw_err(out, e))?;
    Ok(())
}

/// Ops/s against replicas, from a run CSV.
fn throughput(input: &Path, output: &Path) -> Result<(), Exit> {
    let csv = Csv::read(input)?;
    let replicas = csv.column(input, "replicas")?;
    let nodes = csv.column(input, "nodes")?;
    let ops = csv.numbers(input, "ops_per_s")?;
    let p99 = csv.numbers(input, "p99_ms")?;
    let total = csv.column(input, "ops")?;
    let clients = csv.column(input, "clients")?;
    let errors = csv.numbers(input, "errors")?;
    let bars: Vec<Bar> = (0..ops.len())
        .map(|i| {
            let mut notes = vec![format!("{} ops/s", grouped(ops[i])), format!("p99 {:.2} ms", p99[i])];
            if errors[i] > 0.0 {
                notes.push(format!("{} errors", errors[i]));
            }
            let name = if replicas[i] == "1" { "1 replica".to_string() } else { format!("{} replicas", replicas[i]) };
            Bar { name, value: ops[i], notes }
        })
        .collect();
    let title = format!(
        "GTStore throughput: {} operations, {} nodes, {} clients",
        total.first().map(String::as_str).unwrap_or("?"),
        nodes.first().map(String::as_str).unwrap_or("?"),
        clients.first().map(String::as_str).unwrap_or("?")
    );
    bar_chart(output, &title, "replicas per key (N)", "operations per second", &bars, None)?;
    println!("wrote {}", output.display());
    Ok(())
}

/// Keys per node, from a node CSV; also a text histogram on stdout.
fn balance(input: &Path, output: &Path) -> Result<(), Exit> {
    let csv = Csv::read(input)?;
    let node = csv.column(input, "node")?;
    let keys = csv.numbers(input, "keys")?;
    let total: f64 = keys.iter().sum();
    let mean = total / keys.len() as f64;
    let max = keys.iter().copied().fold(0.0, f64::max);
    let min = keys.iter().copied().fold(f64::INFINITY, f64::min);
    let bars: Vec<Bar> = (0..keys.len())
        .map(|i| Bar {
            name: format!("server{}", node[i]),
            value: keys[i],
            notes: vec![format!("{} ({:+.1}%)", grouped(keys[i]), (keys[i] / mean - 1.0) * 100.0)],
        })
        .collect();
    let title = format!("GTStore load balance: {} keys on {} nodes", grouped(total), keys.len());
    bar_chart(output, &title, "storage node", "keys held", &bars, Some((mean, format!("mean {}", grouped(mean)))))?;

    println!("keys per node ({} keys, {} nodes, mean {:.0}):", total, keys.len(), mean);
    const WIDE: f64 = 50.0;
    for (i, &k) in keys.iter().enumerate() {
        let len = if max > 0.0 { (k / max * WIDE).round() as usize } else { 0 };
        println!("server{:<3} {:>9} {:+6.1}% |{}", node[i], k, (k / mean - 1.0) * 100.0, "#".repeat(len));
    }
    println!("max/mean={:.3} min/mean={:.3}", max / mean, min / mean);
    println!("wrote {}", output.display());
    Ok(())
}

/// Height of one bar's row in the `peers` chart, in pixels.
const PEER_ROW: u32 = 44;

/// Ops/s of each system, from `vs-peers.csv`: horizontal bars, so that
/// long names (`redis-benchmark:gtstore-resp 1x1`) stay readable.
fn peers(input: &Path, output: &Path) -> Result<(), Exit> {
    let csv = Csv::read(input)?;
    let system = csv.column(input, "system")?;
    let nodes = csv.column(input, "nodes")?;
    let replicas = csv.column(input, "replicas")?;
    let ops = csv.numbers(input, "ops_per_s")?;
    let p99 = csv.numbers(input, "p99_ms")?;
    let bars: Vec<Bar> = (0..ops.len())
        .map(|i| Bar {
            name: format!("{} {}x{}", system[i], nodes[i], replicas[i]),
            value: ops[i],
            notes: vec![format!("{} ops/s, p99 {:.2} ms", grouped(ops[i]), p99[i])],
        })
        .collect();
    let ours: Vec<bool> = system.iter().map(|s| s.contains("gtstore")).collect();
    let title = "Operations per second in one run, GTStore in blue; p99 latency on each bar";
    hbar_chart(output, title, "operations per second (50/50 GET/SET)", &bars, &ours)?;
    println!("wrote {}", output.display());
    Ok(())
}

/// Draws a horizontal bar chart of `bars`, the first on top, each with its first note after it;
/// the bars whose `highlight` is true in blue, the others in grey.
fn hbar_chart(out: &Path, title: &str, x_desc: &str, bars: &[Bar], highlight: &[bool]) -> Result<(), Exit> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Exit::new(EX_OSERR, format!("{}: {e}", dir.display())))?;
    }
    let n = bars.len() as i32;
    // Room on the right for the notes.
    let xmax = bars.iter().map(|b| b.value).fold(0.0, f64::max).max(1.0) * 1.45;
    let height = 140 + PEER_ROW * bars.len() as u32;
    let root = SVGBackend::new(out, (WIDTH + 200, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(out, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(260)
        .build_cartesian_2d(0.0..xmax, (0..n - 1).into_segmented())
        .map_err(|e| draw_err(out, e))?;
    // Row i of the chart (counted from the bottom) shows bar n-1-i, so the first bar is on top.
    let name_of = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
            bars.get((n - 1 - *i) as usize).map(|b| b.name.clone()).unwrap_or_default()
        }
        SegmentValue::Last => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .x_desc(x_desc)
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 14))
        .y_labels(bars.len())
        .y_label_formatter(&name_of)
        .x_label_formatter(&|v| grouped(*v))
        .draw()
        .map_err(|e| draw_err(out, e))?;
    chart
        .draw_series(
            Histogram::horizontal(&chart)
                .style_func(|seg, _| {
                    let i = match seg {
                        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => (n - 1 - *i) as usize,
                        SegmentValue::Last => usize::MAX,
                    };
                    match highlight.get(i) {
                        Some(true) => BAR.filled(),
                        _ => PEER.filled(),
                    }
                })
                .margin(8)
                .data(bars.iter().enumerate().map(|(i, b)| (n - 1 - i as i32, b.value))),
        )
        .map_err(|e| draw_err(out, e))?;
    let note_style = TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, b) in bars.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(b.value, SegmentValue::CenterOf(n - 1 - i as i32)));
        if let Some(note) = b.notes.first() {
            root.draw(&Text::new(note.clone(), (x + 8, y), note_style.clone())).map_err(|e| draw_err(out, e))?;
        }
    }
    root.present().map_err(|e| draw_err(out, e))?;
    Ok(())
}
