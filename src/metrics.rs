//! What the daemons count and how they show it: fixed-bucket histograms
//! and the Prometheus text exposition format (version 0.0.4), served on
//! a `--metrics-listen` port through the HTTP framing of the event loop.
//!
//! Recording is meant for the request path: a counter is a `u64` field, a
//! [`Histogram`] a fixed array, and [`Histogram::observe`] a search over at
//! most [`MAX_BUCKETS`] bounds, with no allocation and no formatting. Text
//! is made only when a scrape asks for it ([`Exposition`]).

use std::fmt::Write;
use std::time::Duration;

use crate::net::http;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The path metrics are served at.
pub const PATH: &str = "/metrics";

/// The most bucket bounds a histogram has (its last bucket, `+Inf`, is extra).
pub const MAX_BUCKETS: usize = 16;

/// Bounds for durations, in microseconds: 100 us to 10 s, about three per decade.
pub const DURATION_BUCKETS_US: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// Bounds for sizes counted in items (writes per group commit): powers of two to 4096.
pub const COUNT_BUCKETS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// Observations in fixed buckets, Prometheus style: each bucket counts the
/// observations at most its bound and above the bound before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    /// Upper bounds, ascending, in the unit of the observations.
    bounds: &'static [u64],
    /// `counts[i]` for bound `i`; `counts[bounds.len()]` for the rest.
    counts: [u64; MAX_BUCKETS + 1],
    /// The sum of the observations, in their unit.
    sum: u64,
    /// Observations per exported unit: 1,000,000 for microseconds shown
    /// in seconds, 1 for counts.
    per_unit: u64,
}

impl Histogram {
    /// Durations, observed in microseconds and shown in seconds.
    pub fn durations() -> Histogram {
        Histogram::new(DURATION_BUCKETS_US, 1_000_000)
    }

    /// Sizes in items, shown as they are.
    pub fn counts() -> Histogram {
        Histogram::new(COUNT_BUCKETS, 1)
    }

    /// A histogram over `bounds` (ascending, at most [`MAX_BUCKETS`]; any
    /// more are ignored), shown divided by `per_unit`.
    pub fn new(bounds: &'static [u64], per_unit: u64) -> Histogram {
        debug_assert!(bounds.len() <= MAX_BUCKETS && bounds.windows(2).all(|w| w[0] < w[1]));
        let bounds = bounds.get(..MAX_BUCKETS).unwrap_or(bounds);
        Histogram { bounds, counts: [0; MAX_BUCKETS + 1], sum: 0, per_unit: per_unit.max(1) }
    }

    /// Counts one observation of `value`.
    pub fn observe(&mut self, value: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum = self.sum.saturating_add(value);
    }

    /// Counts one duration (a histogram of [`Histogram::durations`]).
    pub fn observe_duration(&mut self, d: Duration) {
        self.observe(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// How many observations there were.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of the observations, in their unit.
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Adds `other`'s observations (with the same bounds) to these.
    pub fn merge(&mut self, other: &Histogram) {
        debug_assert_eq!(self.bounds, other.bounds);
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum = self.sum.saturating_add(other.sum);
    }

    /// The `q` quantile (0..=1) in the unit of the observations, as
    /// Prometheus's `histogram_quantile` estimates it: linear within the
    /// bucket the rank falls in (from 0 for the first), the last bound for
    /// the open bucket; `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = self.bounds.get(i) else {
                    return self.bounds.last().copied();
                };
                let lower = if i == 0 { 0 } else { self.bounds.get(i - 1).copied().unwrap_or(0) };
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lower + ((upper - lower) as f64 * within).round() as u64);
            }
            below += n;
        }
        self.bounds.last().copied()
    }
}

/// A metric family's type, as its `# TYPE` line says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (restarts at 0 when the process does).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Text in the exposition format, built one family at a time: a
/// [`family`](Exposition::family) line pair, then its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts family `name`: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(is_name(name), "{name}");
        let _ = writeln!(self.out, "# HELP {name} {}", escape(help, false));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.word());
    }

    /// One sample of a counter or gauge.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// One histogram's samples: cumulative `_bucket`s with their `le`
    /// bound, `_sum` and `_count`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let mut cumulative = 0u64;
        let mut le = String::new();
        for (i, n) in h.counts.iter().enumerate().take(h.bounds.len() + 1) {
            cumulative += n;
            le.clear();
            match h.bounds.get(i) {
                Some(&b) => {
                    let _ = write!(le, "{}", b as f64 / h.per_unit as f64);
                }
                None => le.push_str("+Inf"),
            }
            let _ = write!(self.out, "{name}_bucket");
            self.labels(labels, Some(&le));
            let _ = writeln!(self.out, " {cumulative}");
        }
        let _ = write!(self.out, "{name}_sum");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", h.sum as f64 / h.per_unit as f64);
        let _ = write!(self.out, "{name}_count");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {cumulative}");
    }

    /// `{a="x",b="y"}` (with `le` last), or nothing without labels.
    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let all = labels.iter().copied().chain(le.map(|v| ("le", v)));
        for (i, (k, v)) in all.enumerate() {
            debug_assert!(is_name(k) && !k.contains(':'), "{k}");
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{k}=\"{}\"", escape(v, true));
        }
        self.out.push('}');
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// `text` with backslashes and line feeds escaped, and double quotes too
/// in a label value (`quotes`), as the format asks.
fn escape(text: &str, quotes: bool) -> std::borrow::Cow<'_, str> {
    if !(text.contains(['\\', '\n']) || quotes && text.contains('"')) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.into()
}

/// A valid metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn is_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// The reply to a request on a metrics port: `render()`'s text for
/// `GET /metrics`, 404 for another path, 405 for another method.
/// `render` runs only for a scrape.
pub fn serve(req: &http::Request, render: impl FnOnce() -> String) -> Vec<u8> {
    let path = req.path.split('?').next().unwrap_or_default();
    if path != PATH {
        return http::reply(404, "Not Found", "text/plain", format!("no {} here; try {PATH}\n", req.path).as_bytes());
    }
    if req.method != "GET" {
        // RFC 9110: a 405 says which methods the resource has.
        let body = format!("{} is not allowed here; use GET\n", req.method);
        let mut out = format!(
            "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body.as_bytes());
        return out;
    }
    http::reply(200, "OK", CONTENT_TYPE, render().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_bucket_of_the_first_bound_not_below_them() {
        let mut h = Histogram::durations();
        for us in [0, 100, 101, 250, 9_999_999, 10_000_000, 10_000_001, u64::MAX] {
            h.observe(us);
        }
        h.observe_duration(Duration::from_millis(3));
        assert_eq!(h.counts[0], 2, "0 and 100 us are at most 100 us");
        assert_eq!(h.counts[1], 2, "101 and 250 us");
        assert_eq!(h.counts[5], 1, "3 ms is in (2.5 ms, 5 ms]");
        assert_eq!(h.counts[15], 2, "up to 10 s");
        assert_eq!(h.counts[16], 2, "past the last bound");
        assert_eq!(h.count(), 9);
        assert_eq!(h.sum(), u64::MAX, "the sum saturates");
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let mut h = Histogram::counts();
        assert_eq!(h.quantile(0.5), None);
        for _ in 0..10 {
            h.observe(3); // (2, 4]
        }
        assert_eq!(h.quantile(0.0), Some(2));
        assert_eq!(h.quantile(0.5), Some(3));
        assert_eq!(h.quantile(1.0), Some(4));
        h.observe(1 << 20);
        assert_eq!(h.quantile(1.0), Some(4096), "the open bucket answers its lower bound");
        let mut other = Histogram::counts();
        other.observe(1);
        h.merge(&other);
        assert_eq!((h.count(), h.sum()), (12, 30 + (1 << 20) + 1));
    }

    #[test]
    fn the_exposition_has_help_type_cumulative_buckets_sum_and_count() {
        let mut e = Exposition::new();
        e.single("gtstore_keys", Kind::Gauge, "Live keys.", 7);
        e.family("gtstore_requests_total", Kind::Counter, "Requests; a \\ and a\nnewline.");
        e.sample("gtstore_requests_total", &[("verb", "PUT")], 3);
        e.sample("gtstore_requests_total", &[("verb", "a\"b\\c\nd")], 0);
        let mut h = Histogram::new(&[100, 250_000], 1_000_000);
        h.observe(50);
        h.observe(200_000);
        h.observe(3_000_000);
        e.family("gtstore_d_seconds", Kind::Histogram, "Durations.");
        e.histogram("gtstore_d_seconds", &[("verb", "GET")], &h);
        let want = "# HELP gtstore_keys Live keys.
# TYPE gtstore_keys gauge
gtstore_keys 7
# HELP gtstore_requests_total Requests; a \\\\ and a\\nnewline.
# TYPE gtstore_requests_total counter
gtstore_requests_total{verb=\"PUT\"} 3
gtstore_requests_total{verb=\"a\\\"b\\\\c\\nd\"} 0
# HELP gtstore_d_seconds Durations.
# TYPE gtstore_d_seconds histogram
gtstore_d_seconds_bucket{verb=\"GET\",le=\"0.0001\"} 1
gtstore_d_seconds_bucket{verb=\"GET\",le=\"0.25\"} 2
gtstore_d_seconds_bucket{verb=\"GET\",le=\"+Inf\"} 3
gtstore_d_seconds_sum{verb=\"GET\"} 3.20005
gtstore_d_seconds_count{verb=\"GET\"} 3
";
        assert_eq!(e.finish(), want);
    }

    #[test]
    fn every_duration_bound_prints_as_a_short_decimal() {
        let mut e = Exposition::new();
        e.histogram("x", &[], &Histogram::durations());
        let les: Vec<String> =
            e.finish().lines().filter_map(|l| Some(l.split("le=\"").nth(1)?.split('"').next()?.to_string())).collect();
        assert_eq!(
            les,
            [
                "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
                "0.5", "1", "2.5", "5", "10", "+Inf"
            ]
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(is_name("gtstore_requests_total") && is_name("_x:y") && !is_name("") && !is_name("1x"));
        assert!(!is_name("a-b") && !is_name("a b"));
    }

    #[test]
    fn only_get_of_the_metrics_path_is_served() {
        let req = |method: &str, path: &str| http::Request { method: method.into(), path: path.into() };
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        let ok = text(serve(&req("GET", "/metrics"), || "x 1\n".into()));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.contains(CONTENT_TYPE) && ok.ends_with("\r\n\r\nx 1\n"));
        assert!(text(serve(&req("GET", "/metrics?a=b"), String::new)).starts_with("HTTP/1.1 200 "));
        let mut rendered = false;
        let missing = text(serve(&req("GET", "/"), || {
            rendered = true;
            String::new()
        }));
        assert!(missing.starts_with("HTTP/1.1 404 Not Found\r\n") && !rendered);
        let post = text(serve(&req("POST", "/metrics"), String::new));
        assert!(post.starts_with("HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\n"), "{post}");
        let len: usize = post.split("Content-Length: ").nth(1).unwrap().split('\r').next().unwrap().parse().unwrap();
        assert_eq!(len, post.split("\r\n\r\n").nth(1).unwrap().len());
    }
}
