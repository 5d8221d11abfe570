//! Metrics (SPEC §12, issue #12 items 3 and 5): `curl` scrapes `/metrics` of the nodes and the
//! manager of a real cluster (`make start` gives each a metrics port), the counters and
//! histograms move with the traffic sent through the CLI, the gauges match what the cluster
//! holds, HTTP errors are answered and closed, and `gtstore stats --node I` prints a node's
//! figures.
//!
//! Ports: 32000–32099 (a cluster on BASE_PORT uses BASE_PORT..=BASE_PORT+n, its metrics
//! BASE_PORT+200..=BASE_PORT+200+n).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Keys put and read in the traffic test.
const KEYS: usize = 20;

/// True if `curl` runs here; otherwise says the test is skipped.
fn have_curl() -> bool {
    match Command::new("curl").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            println!("skipped: curl is not installed");
            false
        }
    }
}

/// `curl -s -w '\n%{http_code}' ARGS... URL`: the status code and the body.
fn curl(args: &[&str], url: &str) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "10", "-w", "\n%{http_code}"]).args(args).arg(url);
    let out = run_timeout(cmd, None, CLI_TIMEOUT);
    assert_ok(&out);
    let text = stdout(&out);
    let (body, code) = text.rsplit_once('\n').unwrap_or_else(|| panic!("curl {url}: no status in {text:?}"));
    (code.parse().unwrap_or_else(|_| panic!("curl {url}: status {code:?}")), body.to_string())
}

/// The metrics page of the daemon whose metrics port is `port`, parsed: series (name with its
/// labels, as printed) to value. Checks the 200 and that every sample's family has HELP and TYPE.
fn scrape(port: u16) -> BTreeMap<String, f64> {
    let (code, text) = curl(&[], &format!("http://127.0.0.1:{port}/metrics"));
    assert_eq!(code, 200, "scrape of port {port}: {text}");
    let mut families = BTreeMap::new();
    let mut series = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        match words[..] {
            ["#", "HELP", name, ..] => {
                families.entry(name.to_string()).or_insert((false, false)).0 = true;
            }
            ["#", "TYPE", name, kind] => {
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                families.entry(name.to_string()).or_insert((false, false)).1 = true;
            }
            _ => {
                let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
                let base = name.split('{').next().unwrap();
                assert!(base.starts_with("gtstore_"), "{line}");
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| base.strip_suffix(s).filter(|f| families.contains_key(*f)))
                    .unwrap_or(base);
                assert_eq!(families.get(family), Some(&(true, true)), "no HELP and TYPE before {line:?}");
                let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
                assert!(series.insert(name.to_string(), v).is_none(), "{name} twice");
            }
        }
    }
    series
}

/// The value of `name` in a scrape; panics, listing the page, if it is missing.
#[track_caller]
fn get(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    *m.get(name).unwrap_or_else(|| panic!("{name} missing from {:#?}", m.keys().collect::<Vec<_>>()))
}

/// `name` summed over the scrapes `ms`.
fn total(ms: &[BTreeMap<String, f64>], name: &str) -> f64 {
    ms.iter().map(|m| get(m, name)).sum()
}

/// The metrics port of node `i` (0: the manager) of cluster `c`.
fn metrics_port(c: &Cluster, i: u16) -> u16 {
    c.base_port + 200 + i
}

/// Every node's scrape.
fn scrape_nodes(c: &Cluster) -> Vec<BTreeMap<String, f64>> {
    (1..=c.nodes).map(|i| scrape(metrics_port(c, i))).collect()
}

/// The cumulative buckets of a histogram rise, and the `+Inf` bucket is the count.
#[track_caller]
fn assert_histogram(m: &BTreeMap<String, f64>, name: &str, labels: &str) {
    let prefix = format!("{name}_bucket{{{labels}");
    let buckets: Vec<f64> = m.iter().filter(|(k, _)| k.starts_with(&prefix)).map(|(_, v)| *v).collect();
    assert!(buckets.len() >= 2, "{name}{{{labels}}}: buckets {buckets:?}");
    let inf = get(m, &format!("{prefix},le=\"+Inf\"}}").replace("{,", "{"));
    assert!(buckets.iter().all(|&b| b <= inf), "{name}: a bucket over +Inf");
    let count_name = if labels.is_empty() { format!("{name}_count") } else { format!("{name}_count{{{labels}}}") };
    assert_eq!(inf, get(m, &count_name), "{name}{{{labels}}}: +Inf bucket and count");
}

#[test]
fn curl_reads_metrics_that_move_with_traffic_and_gtstore_stats_prints_a_nodes_figures() {
    if !have_curl() {
        return;
    }
    let c = Cluster::start(32000, 3, 3);
    let before = scrape_nodes(&c);
    let put = "gtstore_requests_total{verb=\"PUT\"}";
    let get_ = "gtstore_requests_total{verb=\"GET\"}";
    let put_n = "gtstore_request_duration_seconds_count{verb=\"PUT\"}";
    let get_n = "gtstore_request_duration_seconds_count{verb=\"GET\"}";

    for i in 0..KEYS {
        assert_ok(&c.cli(&["--put", &format!("key{i}"), "--val", &format!("value{i}")]));
    }
    for i in 0..KEYS {
        let out = c.cli(&["--get", &format!("key{i}")]);
        assert_ok(&out);
        assert!(stdout(&out).starts_with(&format!("key{i}, value{i}, server")), "{}", stdout(&out));
    }
    let missing = c.cli(&["--get", "no-such-key"]);
    assert_exit(&missing, 1);

    // Every replica gets every write (3 nodes, 3 replicas); the third may trail the quorum.
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let now = scrape_nodes(&c);
        if now.iter().all(|m| get(m, "gtstore_keys") == KEYS as f64) || Instant::now() > deadline {
            break now;
        }
        thread::sleep(Duration::from_millis(200));
    };
    for (i, m) in after.iter().enumerate() {
        assert_eq!(get(m, "gtstore_keys"), KEYS as f64, "node {}: keys gauge", i + 1);
        assert_eq!(get(m, "gtstore_tombstones"), 0.0);
        assert_eq!(get(m, "gtstore_sectors_under_replicated"), 0.0);
        assert_eq!(get(m, "gtstore_sectors_held"), 1024.0, "3 replicas on 3 nodes: every node holds every sector");
        assert!(get(m, "gtstore_connections{kind=\"metrics\"}") >= 1.0, "this scrape is a metrics connection");
        assert_eq!(get(m, "gtstore_connections{kind=\"manager\"}"), 1.0);
        assert!(get(m, "gtstore_wal_written_bytes_total") > 0.0);
        assert!(get(m, "gtstore_group_commit_writes_count") > 0.0);
        assert!(get(m, "gtstore_wal_fsync_duration_seconds_count") > 0.0);
        assert!(get(m, "gtstore_loop_turn_duration_seconds_count") > 0.0);
        for verb in ["PUT", "GET", "DEL"] {
            assert_histogram(m, "gtstore_request_duration_seconds", &format!("verb=\"{verb}\""));
        }
        assert_histogram(m, "gtstore_wal_fsync_duration_seconds", "");
        assert_histogram(m, "gtstore_loop_turn_duration_seconds", "");
    }
    assert_eq!(total(&after, "gtstore_sectors_owned"), 1024.0, "each sector has one owner");
    // Each request is counted and timed where it arrives (and again where it is forwarded to).
    let moved = |name: &str| total(&after, name) - total(&before, name);
    assert!(moved(put) >= KEYS as f64, "PUT requests moved by {}", moved(put));
    assert!(moved(get_) >= (KEYS + 1) as f64, "GET requests moved by {}", moved(get_));
    assert!(moved(put_n) >= KEYS as f64, "PUT latencies moved by {}", moved(put_n));
    assert!(moved(get_n) >= (KEYS + 1) as f64, "GET latencies moved by {}", moved(get_n));
    assert!(moved("gtstore_wal_written_bytes_total") > 0.0);
    assert_eq!(moved("gtstore_requests_total{verb=\"DEL\"}"), 0.0);
    assert!(total(&after, "gtstore_errors_total{verb=\"PUT\",code=\"RETRY\"}") >= 0.0, "every code has a series");
    assert!(total(&after, "gtstore_connections{kind=\"peer\"}") >= 2.0, "replicas talk to each other");

    // The manager: three members up, the epoch `gtstore status` shows, no move running.
    let status = c.status_report().expect("gtstore status");
    let mgr = scrape(metrics_port(&c, 0));
    assert_eq!(get(&mgr, "gtstore_manager_members{state=\"up\"}"), 3.0);
    assert_eq!(get(&mgr, "gtstore_manager_members{state=\"down\"}"), 0.0);
    assert_eq!(get(&mgr, "gtstore_manager_epoch"), status.epoch as f64);
    assert_eq!(get(&mgr, "gtstore_manager_move_pending"), 0.0);
    assert_eq!(get(&mgr, "gtstore_manager_move_gainers_left"), 0.0);
    assert_eq!(get(&mgr, "gtstore_connections{kind=\"node\"}"), 3.0);
    for m in &after {
        assert_eq!(get(m, "gtstore_table_epoch"), status.epoch as f64, "nodes route by the manager's table");
    }

    // A delete moves DEL and the tombstones on every replica.
    assert_ok(&c.cli(&["--del", "key0"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    let deleted = loop {
        let now = scrape_nodes(&c);
        if now.iter().all(|m| get(m, "gtstore_tombstones") == 1.0) || Instant::now() > deadline {
            break now;
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert!(total(&deleted, "gtstore_requests_total{verb=\"DEL\"}") >= 1.0);
    assert!(total(&deleted, "gtstore_request_duration_seconds_count{verb=\"DEL\"}") >= 1.0);
    for m in &deleted {
        assert_eq!((get(m, "gtstore_keys"), get(m, "gtstore_tombstones")), ((KEYS - 1) as f64, 1.0));
    }

    // gtstore stats: the same figures, for people.
    let out = c.cli(&["stats", "--node", "1"]);
    assert_ok(&out);
    let text = stdout(&out);
    let line = |prefix: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{text}"))
            .to_string()
    };
    assert!(line("server1 ").contains(" up"), "{text}");
    assert_eq!(line("keys "), format!("keys {}", KEYS - 1), "{text}");
    assert_eq!(line("tombstones "), "tombstones 1", "{text}");
    assert!(line("sectors held ").ends_with("under-replicated 0"), "{text}");
    assert_eq!(line("hints pending "), "hints pending 0", "{text}");
    let stats_put: u64 = line("requests ")
        .split(", ")
        .find_map(|w| w.strip_prefix("requests PUT ").or_else(|| w.strip_prefix("PUT ")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no PUT count in:\n{text}"));
    assert_eq!(stats_put as f64, get(&deleted[0], put), "stats and metrics agree on node 1's PUTs");
    assert!(line("latency PUT ").contains(" p50 ") && line("latency PUT ").contains(" p99 "), "{text}");
    assert!(line("latency GET ").contains("answers)"), "{text}");
    assert_exit(&c.cli(&["stats"]), 64);
    assert_exit(&c.cli(&["stats", "--node", "9"]), 69);

    // HTTP errors: another path, another method, bytes that are not HTTP.
    for port in [metrics_port(&c, 1), metrics_port(&c, 0)] {
        let (code, body) = curl(&[], &format!("http://127.0.0.1:{port}/nope"));
        assert_eq!(code, 404, "{body}");
        let (code, body) = curl(&["-X", "POST"], &format!("http://127.0.0.1:{port}/metrics"));
        assert_eq!(code, 405, "{body}");
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"\x16\x03\x01 garbage\r\n\r\n").unwrap();
        let mut reply = Vec::new();
        // read_to_end returns only once the daemon closes the connection.
        s.read_to_end(&mut reply).expect("the daemon answers and closes");
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    }
    // The daemons live on after all that.
    let again = scrape(metrics_port(&c, 1));
    assert!(get(&again, put) >= get(&deleted[0], put));
}

#[test]
fn metrics_listen_is_checked_like_listen() {
    for bin in ["gtstore-storage", "gtstore-manager"] {
        let help = run_bin(bin, &["--help"]);
        assert_ok(&help);
        assert!(stdout(&help).contains("--metrics-listen"), "{bin} --help");
        let mut args = vec!["--metrics-listen"];
        if bin == "gtstore-storage" {
            args.splice(0..0, ["--id", "1"]);
        }
        for (addr, why) in
            [("0.0.0.0:32090", "unspecified"), ("192.0.2.1:32090", "loopback"), ("not-an-address", "HOST:PORT")]
        {
            let mut a = args.clone();
            a.push(addr);
            let out = run_bin(bin, &a);
            assert_exit(&out, 64);
            assert!(stderr(&out).contains(why), "{bin} --metrics-listen {addr}: {}", stderr(&out));
        }
    }
}
