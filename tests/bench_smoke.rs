//! Smoke test of `gtstore-bench` (SPEC section 10): a short run against a one-node cluster exits
//! 0 with no errors and prints a well-formed report line. Benchmarks are not tests: nothing here
//! asserts a timing.
//!
//! Ports: 27000–27099.

mod common;

use std::collections::HashMap;

use common::*;

/// The `name=value` fields of the line of `out` that starts with `prefix`.
fn fields(out: &str, prefix: &str) -> HashMap<String, String> {
    let line =
        out.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line starting '{prefix}' in:\n{out}"));
    line.split(' ')
        .map(|f| {
            let (k, v) = f.split_once('=').unwrap_or_else(|| panic!("field '{f}' is not name=value in '{line}'"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn a_short_run_reports_every_field_and_no_errors() {
    let c = Cluster::start(27000, 1, 1);
    let csv = c.run_dir.join("bench.csv");
    let csv_s = csv.to_string_lossy().into_owned();
    let manager = c.manager_addr();
    let out = run_bin(
        "gtstore-bench",
        &[
            "--manager",
            &manager,
            "--ops",
            "3000",
            "--clients",
            "8",
            "--pipeline",
            "2",
            "--keys",
            "500",
            "--preload",
            "--quiet",
            "--node-stats",
            "--label",
            "smoke",
            "--csv",
            &csv_s,
        ],
    );
    assert_ok(&out);
    let text = stdout(&out);

    let r = fields(&text, "ops=");
    let order: Vec<&str> = text.lines().find(|l| l.starts_with("ops=")).unwrap().split(' ').collect();
    let names: Vec<&str> = order.iter().map(|f| f.split('=').next().unwrap()).collect();
    assert_eq!(names, ["ops", "errors", "seconds", "ops_per_s", "p50_ms", "p99_ms", "p999_ms", "max_ms"]);
    assert_eq!(r["ops"], "3000");
    assert_eq!(r["errors"], "0", "stderr: {}", stderr(&out));
    for k in ["seconds", "ops_per_s", "p50_ms", "p99_ms", "p999_ms", "max_ms"] {
        let v: f64 = r[k].parse().unwrap_or_else(|_| panic!("{k}={} is not a number", r[k]));
        assert!(v >= 0.0 && v.is_finite(), "{k}={v}");
    }
    let p = |k: &str| r[k].parse::<f64>().unwrap();
    assert!(p("p50_ms") <= p("p99_ms") && p("p99_ms") <= p("p999_ms") && p("p999_ms") <= p("max_ms"), "{r:?}");

    // The preload wrote every key of the key space, and the node reports them.
    let n = fields(&text, "node=1 ");
    assert_eq!(n["keys"], "500");

    let table = std::fs::read_to_string(&csv).expect("the CSV file was written");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "label,nodes,replicas,clients,pipeline,ops,errors,seconds,ops_per_s,p50_ms,p99_ms,p999_ms,max_ms"
    );
    assert!(lines[1].starts_with("smoke,1,1,8,2,3000,0,"), "{}", lines[1]);
}

#[test]
fn no_cluster_is_exit_69_and_bad_usage_is_exit_64() {
    // Nothing listens on this port.
    let out = run_bin("gtstore-bench", &["--manager", "127.0.0.1:27090", "--ops", "10", "--quiet"]);
    assert_exit(&out, 69);
    let out = run_bin("gtstore-bench", &["--read-ratio", "2"]);
    assert_exit(&out, 64);
    let out = run_bin("gtstore-bench", &["chart", "pie"]);
    assert_exit(&out, 64);
}
