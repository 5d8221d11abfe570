//! Clients that bootstrap from a storage node while the manager is down (issue #10 item 11):
//! a brand-new `gtstore` process given the manager and the nodes (`--manager M,N1,N2,...`)
//! works with the manager killed, `make status` prints a node's table and says the manager is
//! down, everything is normal again after `make restart-manager`, and a node answers HELLO and
//! GET_TABLE with a table a client routes by.
//!
//! Ports: 29000–29990, one BASE_PORT per test in steps of 10.

mod common;

use std::net::TcpStream;
use std::process::Output;
use std::time::Duration;

use common::*;
use gtstore::client::{self, Client, Config};
use gtstore::net::codec::{Body, Header, Message};
use gtstore::table::Table;

/// The `--manager` list a user gives: the manager first, then every node of the cluster.
fn bootstrap_list(c: &Cluster) -> String {
    let mut addrs = vec![c.manager_addr()];
    addrs.extend((1..=c.nodes).map(|i| c.node_addr(i)));
    addrs.join(",")
}

/// `gtstore --manager LIST ARGS...`: a brand-new CLI process.
fn cli_list(c: &Cluster, args: &[&str]) -> Output {
    let list = bootstrap_list(c);
    let mut all = vec!["--manager", list.as_str()];
    all.extend_from_slice(args);
    run_bin("gtstore", &all)
}

#[track_caller]
fn assert_prints_prefix(out: &Output, prefix: &str) {
    assert_ok(out);
    let text = stdout(out);
    assert!(text.starts_with(prefix) && text.ends_with('\n'), "expected {prefix}..., got {text:?}");
}

/// The lines of a status output that start with `manager`.
fn manager_lines(text: &str) -> Vec<String> {
    text.lines().filter(|l| l.starts_with("manager")).map(str::to_string).collect()
}

/// Checks a `make status` taken while the manager is down: exit 0, every node listed up with
/// its key count, and one line saying the manager is down.
#[track_caller]
fn check_status_manager_down(c: &Cluster, out: &Output) {
    assert_ok(out);
    let text = stdout(out);
    let s = parse_status(&text).unwrap_or_else(|| panic!("status has the documented shape:\n{text}"));
    assert_eq!(s.nodes.len(), c.nodes as usize, "{text}");
    assert!(s.nodes.iter().all(|n| n.state == "up" && n.keys.is_some()), "{text}");
    let lines = manager_lines(&text);
    let want = format!("manager {} down", c.manager_addr());
    assert!(lines.len() == 1 && lines[0].starts_with(&want), "expected a line `{want} ...` in\n{text}");
}

#[test]
fn new_cli_works_while_the_manager_is_down() {
    let c = Cluster::start(29000, 3, 3);
    assert_prints_prefix(&c.cli(&["--put", "before", "--val", "v0"]), "OK, server");
    c.kill_manager();
    assert!(c.manager_pid().is_none(), "the manager survived make kill-manager");

    // The manager alone cannot give a new process a table: as before, exit 69.
    let out = c.cli(&["--deadline-ms", "600", "--get", "before"]);
    assert_exit(&out, 69);

    // With the nodes in the list, a brand-new process puts, gets and deletes.
    assert_prints_prefix(&cli_list(&c, &["--put", "boot-key", "--val", "boot-value"]), "OK, server");
    assert_prints_prefix(&cli_list(&c, &["--get", "boot-key"]), "boot-key, boot-value, server");
    assert_prints_prefix(&cli_list(&c, &["--get", "before"]), "before, v0, server");
    assert_prints_prefix(&cli_list(&c, &["--del", "boot-key"]), "OK, server");
    let out = cli_list(&c, &["--get", "boot-key"]);
    assert_exit(&out, 1);
    assert_eq!(stderr(&out), "gtstore: boot-key: not found\n");

    // A list whose first node is dead too: the next one answers.
    let list = format!("{},127.0.0.1:29009,{}", c.manager_addr(), c.node_addr(2));
    assert_prints_prefix(&run_bin("gtstore", &["--manager", &list, "--get", "before"]), "before, v0, server");

    // `make status` shows the nodes and says the manager is down.
    let out = c.status();
    check_status_manager_down(&c, &out);
    let s = parse_status(&stdout(&out)).expect("status parses");
    assert_eq!(s.nodes.iter().filter_map(|n| n.keys).sum::<u64>(), 3, "one live key on 3 replicas\n{}", s.text);
}

#[test]
fn everything_is_normal_after_restart_manager() {
    let c = Cluster::start(29010, 3, 2);
    let normal = c.status();
    assert_ok(&normal);
    assert!(manager_lines(&stdout(&normal)).is_empty(), "{}", stdout(&normal));

    // A client connected through the manager remembers the nodes of its table.
    let mut lib = Client::connect(Config { manager: c.manager_addr(), ..Config::default() }).expect("connect");
    let epoch = lib.table().epoch;
    c.kill_manager();
    assert!(lib.refresh_table(), "with the manager down, the table is fetched from a node");
    assert_eq!(lib.table().epoch, epoch);
    lib.put(b"lib-key", b"lib-value").expect("put with the manager down");

    check_status_manager_down(&c, &c.status());

    c.restart_manager();
    assert!(lib.refresh_table(), "the table from the restarted manager");
    assert_eq!(lib.get(b"lib-key").expect("get").0, b"lib-value");

    // Status is normal again: no manager line, the same shape as before the kill.
    let out = c.status();
    assert_ok(&out);
    let text = stdout(&out);
    assert!(manager_lines(&text).is_empty(), "status after restart-manager:\n{text}");
    let s = parse_status(&text).expect("status parses");
    assert_eq!(s.nodes.len(), 3);
    assert!(s.nodes.iter().all(|n| n.state == "up"), "{text}");
    let before = parse_status(&stdout(&normal)).expect("status parses");
    assert_eq!(s.epoch, before.epoch, "no epoch change across the manager restart");
    assert_eq!(s.sectors(), before.sectors());

    // The plain `--manager ADDR` and the list both work.
    assert_prints_prefix(&c.cli(&["--put", "after", "--val", "v1"]), "OK, server");
    assert_prints_prefix(&cli_list(&c, &["--get", "after"]), "after, v1, server");
    assert_prints_prefix(&c.cli(&["--del", "after"]), "OK, server");
    assert_exit(&c.cli(&["--get", "after"]), 1);
    assert_prints_prefix(&c.cli(&["--get", "lib-key"]), "lib-key, lib-value, server");
}

/// Sends `body` alone on a fresh connection to `addr` and returns the reply.
fn ask(addr: &str, body: Body) -> Message {
    let conn = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let msg = Message { header: Header { req: 7, ..Header::default() }, body };
    client::exchange(&conn, &msg, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{addr}: {e}"))
}

/// The tables of a TABLE reply (panics on anything else).
fn tables(m: &Message) -> (Table, Option<Table>, u32) {
    match &m.body {
        Body::TableMsg { table, pending, contact } => (table.clone(), pending.clone(), *contact),
        other => panic!("expected TABLE, got {other:?}"),
    }
}

#[test]
fn a_node_answers_hello_and_get_table_with_a_routable_table() {
    let c = Cluster::start(29020, 3, 2);
    let (from_manager, _, _) = tables(&ask(&c.manager_addr(), Body::GetTable));
    for verb in [Body::Hello, Body::GetTable] {
        let reply = ask(&c.node_addr(2), verb.clone());
        assert_eq!(reply.header.req, 7, "{verb:?}: the reply carries the request id");
        assert_eq!(reply.header.node, 2, "{verb:?}: the replying node's id");
        assert_eq!(reply.header.client, 0, "{verb:?}: a node issues no client id");
        let (table, pending, contact) = tables(&reply);
        assert_eq!(table, from_manager, "{verb:?}: the node's table is the manager's");
        assert!(pending.is_none(), "no move runs");
        assert_eq!(contact, 2, "{verb:?}: a node names itself as the contact");
    }

    // A client given only a node routes by its table: every key to its coordinator.
    let mut lib = Client::connect(Config { manager: c.node_addr(3), ..Config::default() }).expect("connect via a node");
    assert_eq!(lib.table(), &from_manager);
    assert_ne!(lib.id(), 0, "the library picks its own client id");
    for i in 0..30 {
        let key = format!("routed-{i}");
        let want = client::candidates(&from_manager, key.as_bytes())[0];
        assert_eq!(lib.put(key.as_bytes(), b"v").expect("put"), want, "{key} coordinated by its first replica");
        assert_eq!(lib.get(key.as_bytes()).expect("get"), (b"v".to_vec(), want));
    }
}
