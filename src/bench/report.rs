//! What a run prints and writes: the report lines on standard output, the
//! CSV row, and the per-node figures (key counts from `STATS`, resident
//! memory from `/proc/PID/status`).
//!
//! Standard output is meant to be parsed: every line is `name=value` fields
//! separated by single spaces, and the result line always starts `ops=`
//! with its fields in a fixed order (see `gtstore-bench(1)`).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::load::Outcome;

/// The header of the run CSV (`--csv`).
pub const RUN_CSV_HEADER: &str =
    "label,nodes,replicas,clients,pipeline,ops,errors,seconds,ops_per_s,p50_ms,p99_ms,p999_ms,max_ms";
/// The header of the per-node CSV (`--node-csv`).
pub const NODE_CSV_HEADER: &str = "label,node,keys,sectors,rss_kb,bytes_per_key";

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// `--label`.
    pub label: String,
    /// Storage nodes up in the table, and replicas per key (unknown for `--resp`).
    pub shape: Option<(usize, u32)>,
    /// Concurrent clients.
    pub clients: usize,
    /// Requests in flight per client.
    pub pipeline: usize,
    /// Operations finished.
    pub ops: u64,
    /// Operations failed.
    pub errors: u64,
    /// Elapsed seconds.
    pub seconds: f64,
    /// Successful operations per second.
    pub ops_per_s: f64,
    /// Latency percentiles and maximum, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

impl Summary {
    /// The summary of `o`.
    pub fn new(label: &str, shape: Option<(usize, u32)>, clients: usize, pipeline: usize, o: &Outcome) -> Summary {
        let seconds = o.elapsed.as_secs_f64();
        let ok = o.ops - o.errors;
        let ms = |q: f64| if o.hist.is_empty() { 0.0 } else { o.hist.value_at_quantile(q) as f64 / 1000.0 };
        Summary {
            label: label.to_string(),
            shape,
            clients,
            pipeline,
            ops: o.ops,
            errors: o.errors,
            seconds,
            ops_per_s: if seconds > 0.0 { ok as f64 / seconds } else { 0.0 },
            p50_ms: ms(0.50),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: if o.hist.is_empty() { 0.0 } else { o.hist.max() as f64 / 1000.0 },
        }
    }

    /// The result line: `ops=… errors=… seconds=… ops_per_s=… p50_ms=… p99_ms=… p999_ms=… max_ms=…`.
    pub fn line(&self) -> String {
        format!(
            "ops={} errors={} seconds={:.3} ops_per_s={:.0} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3} max_ms={:.3}",
            self.ops, self.errors, self.seconds, self.ops_per_s, self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms
        )
    }

    /// The CSV row, in the order of [`RUN_CSV_HEADER`]; an unknown shape leaves nodes and replicas empty.
    pub fn csv_row(&self) -> String {
        let (nodes, replicas) =
            self.shape.map_or((String::new(), String::new()), |(n, r)| (n.to_string(), r.to_string()));
        format!(
            "{},{},{},{},{},{},{},{:.3},{:.0},{:.3},{:.3},{:.3},{:.3}",
            self.label,
            nodes,
            replicas,
            self.clients,
            self.pipeline,
            self.ops,
            self.errors,
            self.seconds,
            self.ops_per_s,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms
        )
    }
}

/// Appends `row` to the CSV `path`, writing `header` first if the file is
/// new or empty.
pub fn append_csv(path: &Path, header: &str, rows: &[String]) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let fresh = fs::metadata(path).map(|m| m.len() == 0).unwrap_or(true);
    let mut f =
        OpenOptions::new().create(true).append(true).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    if fresh {
        text.push_str(header);
        text.push('\n');
    }
    for r in rows {
        text.push_str(r);
        text.push('\n');
    }
    f.write_all(text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

/// A storage node's process, found through its pidfile.
#[derive(Debug, Clone)]
pub struct PidSource {
    /// The node id, when the pidfile sits in a `node<ID>` directory.
    pub node: Option<u32>,
    /// The pidfile.
    pub pidfile: PathBuf,
}

impl PidSource {
    /// A pidfile given with `--pidfile`; its node id comes from its directory's name.
    pub fn from_pidfile(path: &Path) -> PidSource {
        let node = path
            .parent()
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("node"))
            .and_then(|n| n.parse().ok());
        PidSource { node, pidfile: path.to_path_buf() }
    }

    /// Every `node<ID>/gtstore-storage.pid` under a run directory.
    pub fn from_run_dir(dir: &Path) -> Result<Vec<PidSource>, String> {
        let rd = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut out: Vec<PidSource> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_prefix("node")?.parse::<u32>().ok()?;
                let pidfile = e.path().join("gtstore-storage.pid");
                pidfile.exists().then_some(PidSource { node: Some(id), pidfile })
            })
            .collect();
        out.sort_by_key(|s| s.node);
        Ok(out)
    }

    /// The resident set size of the process, in KiB, if it can be read.
    pub fn rss_kb(&self) -> Option<u64> {
        let text = fs::read_to_string(&self.pidfile).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        rss_kb(pid)
    }
}

/// `VmRSS` of `pid` from `/proc/PID/status`, in KiB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One node's figures, before and after the run.
#[derive(Debug, Clone, Default)]
pub struct NodeFigures {
    /// The node id.
    pub node: u32,
    /// Live keys before the run (when asked for).
    pub keys_before: Option<u64>,
    /// Live keys after the run.
    pub keys: Option<u64>,
    /// Sectors held after the run.
    pub sectors: Option<u32>,
    /// Resident memory before the run, KiB.
    pub rss_before_kb: Option<u64>,
    /// Resident memory after the run, KiB.
    pub rss_kb: Option<u64>,
}

impl NodeFigures {
    /// Resident bytes per key added by the run: (RSS after − RSS before) / (keys after − keys before).
    pub fn bytes_per_key(&self) -> Option<f64> {
        let (before, after) = (self.rss_before_kb?, self.rss_kb?);
        let added = self.keys?.checked_sub(self.keys_before.unwrap_or(0)).filter(|&k| k > 0)?;
        Some((after as f64 - before as f64) * 1024.0 / added as f64)
    }

    /// `node=1 keys=… sectors=… [rss_before_kb=… rss_kb=… bytes_per_key=…]`; unknown figures are `-`.
    pub fn line(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let mut s = format!(
            "node={} keys={} sectors={}",
            self.node,
            opt(self.keys),
            self.sectors.map_or("-".to_string(), |v| v.to_string())
        );
        if self.rss_kb.is_some() {
            s.push_str(&format!(" rss_before_kb={} rss_kb={}", opt(self.rss_before_kb), opt(self.rss_kb)));
            s.push_str(&format!(" bytes_per_key={}", self.bytes_per_key().map_or("-".into(), |b| format!("{b:.1}"))));
        }
        s
    }

    /// The CSV row, in the order of [`NODE_CSV_HEADER`].
    pub fn csv_row(&self, label: &str) -> String {
        let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
        format!(
            "{label},{},{},{},{},{}",
            self.node,
            opt(self.keys),
            self.sectors.map_or(String::new(), |v| v.to_string()),
            opt(self.rss_kb),
            self.bytes_per_key().map_or(String::new(), |b| format!("{b:.1}"))
        )
    }
}
