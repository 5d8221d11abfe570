#!/bin/sh
# Shared helpers of the bench scripts (sourced, not run): paths, and a private cluster that is
# stopped and removed however the script ends.
#
# Environment: BIN (binaries, default target/release), BENCH_PORT (the cluster's BASE_PORT,
# default 7500), BENCH_RUN_DIR (its RUN_DIR, default run-bench), BENCH_OUT (default
# bench/results), BENCH_FSYNC (default batch).

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
case $BIN in /*) ;; *) BIN=$ROOT/$BIN ;; esac
BENCH=$BIN/gtstore-bench
BENCH_PORT=${BENCH_PORT:-7500}
BENCH_RUN_DIR=${BENCH_RUN_DIR:-run-bench}
case $BENCH_RUN_DIR in /*) ;; *) BENCH_RUN_DIR=$ROOT/$BENCH_RUN_DIR ;; esac
BENCH_OUT=${BENCH_OUT:-$ROOT/bench/results}
BENCH_FSYNC=${BENCH_FSYNC:-batch}
MANAGER=127.0.0.1:$BENCH_PORT
mkdir -p "$BENCH_OUT"

# bench_make TARGET VAR=...: a Makefile target on the bench cluster.
bench_make() {
	make -s -C "$ROOT" "$@" BASE_PORT="$BENCH_PORT" RUN_DIR="$BENCH_RUN_DIR" BIN="$BIN" NOBUILD=1 \
		FSYNC="$BENCH_FSYNC"
}

# cluster_start NODES REP: a fresh cluster on BENCH_PORT in BENCH_RUN_DIR. A start that fails
# (a node not joining in time on a loaded machine) is retried twice, showing the logs' tails.
cluster_start() {
	for try in 1 2 3; do
		cluster_stop
		echo "== cluster: $1 nodes, $2 replicas, port $BENCH_PORT, $BENCH_RUN_DIR" >&2
		if bench_make start NODES="$1" REP="$2" >/dev/null; then
			return 0
		fi
		for log in "$BENCH_RUN_DIR"/*/*.log; do
			[ -r "$log" ] && { echo "-- tail of $log" >&2; tail -n 5 "$log" >&2; }
		done
		echo "== start failed (try $try of 3)" >&2
	done
	return 1
}

# cluster_stop: stop every daemon of BENCH_RUN_DIR and remove it. A daemon that has not exited
# 30 s after SIGTERM is SIGKILLed, so that none outlives the directory.
cluster_stop() {
	if [ -d "$BENCH_RUN_DIR" ]; then
		if ! STOP_TIMEOUT=30 bench_make stop >/dev/null 2>&1; then
			echo "== a daemon ignored SIGTERM for 30 s; killing the cluster" >&2
			"$ROOT/scripts/daemons.sh" kill gtstore-storage "$BENCH_RUN_DIR"/node*/gtstore-storage.pid || true
			"$ROOT/scripts/daemons.sh" kill gtstore-manager "$BENCH_RUN_DIR"/manager/gtstore-manager.pid || true
		fi
		rm -rf "$BENCH_RUN_DIR"
	fi
}

# field NAME: the value of NAME=... in the first line of stdin that has it.
field() {
	sed -n "s/.*\<$1=\([^ ]*\).*/\1/p" | head -n 1
}

# bench_run NAME ARGS...: gtstore-bench with the workload every comparison uses (50 clients,
# 16-byte values, 50/50 GET/SET over 100000 keys written once beforehand, unmeasured) and ARGS
# (the target, --ops...); sets NAME_ops (ops/s), NAME_p50, NAME_p99 (ms) and NAME_err, and
# prints them. Fails if gtstore-bench does.
bench_run() {
	br_name=$1
	shift
	br_out=$("$BENCH" --read-ratio 0.5 --clients 50 --keys 100000 --value-size 16 --preload "$@") ||
		{ echo "== gtstore-bench $* failed" >&2; return 1; }
	br_line=$(echo "$br_out" | grep '^ops=') || { echo "== gtstore-bench printed no result:" >&2; echo "$br_out" >&2; return 1; }
	br_ops=$(echo "$br_line" | field ops_per_s) br_p50=$(echo "$br_line" | field p50_ms)
	br_p99=$(echo "$br_line" | field p99_ms) br_err=$(echo "$br_line" | field errors)
	for br_v in "$br_ops" "$br_p50" "$br_p99" "$br_err"; do
		case $br_v in '' | *[!0-9.]*) echo "== gtstore-bench: unreadable result: $br_line" >&2; return 1 ;; esac
	done
	eval "${br_name}_ops=$br_ops ${br_name}_p50=$br_p50 ${br_name}_p99=$br_p99 ${br_name}_err=$br_err"
	printf '%-18s 50/50 %s ops/s (p50 %s ms, p99 %s ms, %s errors)\n' "$br_name:" "$br_ops" "$br_p50" "$br_p99" "$br_err"
}

# ----- private RESP servers (redis-server, valkey-server) and redis-benchmark -----

# need_redis: redis-server, redis-cli and redis-benchmark, from Debian's packages if missing.
need_redis() {
	if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-benchmark >/dev/null 2>&1; then
		echo "== installing redis-server and redis-tools" >&2
		apt-get update >/dev/null && apt-get install -y redis-server redis-tools >/dev/null
	fi
}

# resp_start BIN DIR PORT [ARGS...]: BIN (redis-server or valkey-server) in the background on
# 127.0.0.1:PORT with its files in DIR, every write fsynced to its append-only file before the
# reply (--appendonly yes --appendfsync always, no snapshots), and ARGS. Returns once it answers
# on the port with its own pid (INFO's process_id: not some other server that held the port);
# its pid is kept in DIR/pid (the server removes its own pidfile when it exits) and its name in
# DIR/comm, for resp_stop.
resp_start() {
	rs_bin=$1 rs_dir=$2 rs_port=$3
	shift 3
	if timeout 5 redis-cli -h 127.0.0.1 -p "$rs_port" ping >/dev/null 2>&1; then
		echo "== port $rs_port is taken by another server" >&2
		return 1
	fi
	mkdir -m 0700 "$rs_dir" || return 1
	"$rs_bin" --port "$rs_port" --bind 127.0.0.1 --dir "$rs_dir" --appendonly yes --appendfsync always \
		--save '' --daemonize yes --pidfile "$rs_dir/server.pid" --logfile "$rs_dir/server.log" "$@" || return 1
	rs_i=0
	until [ -s "$rs_dir/server.pid" ] && [ "$(timeout 5 redis-cli -h 127.0.0.1 -p "$rs_port" info server 2>/dev/null |
		tr -d '\r' | sed -n 's/^process_id://p')" = "$(cat "$rs_dir/server.pid")" ]; do
		rs_i=$((rs_i + 1))
		if [ $rs_i -ge 100 ]; then
			echo "== $rs_bin on port $rs_port did not start; tail of its log:" >&2
			tail -n 5 "$rs_dir/server.log" >&2 || true
			return 1
		fi
		sleep 0.1
	done
	cp "$rs_dir/server.pid" "$rs_dir/pid"
	basename "$rs_bin" | cut -c 1-15 >"$rs_dir/comm"
}

# resp_stop DIR: stops the server resp_start started in DIR, by its pid, if that process still
# has the server's name; SIGKILL if it has not exited 10 s after SIGTERM.
resp_stop() {
	[ -r "$1/pid" ] && [ -r "$1/comm" ] || return 0
	rs_pid=$(cat "$1/pid")
	case $rs_pid in '' | *[!0-9]*) return 0 ;; esac
	[ "$(cat "/proc/$rs_pid/comm" 2>/dev/null)" = "$(cat "$1/comm")" ] || return 0
	kill "$rs_pid" 2>/dev/null || true
	rs_i=0
	while [ -d "/proc/$rs_pid" ] && [ $rs_i -lt 100 ]; do sleep 0.1; rs_i=$((rs_i + 1)); done
	if [ -d "/proc/$rs_pid" ]; then kill -9 "$rs_pid" 2>/dev/null || true; fi
	rm -f "$1/pid"
}

# resp_stop_all ROOT: resp_stop on every directory under ROOT, then removes ROOT.
resp_stop_all() {
	[ -n "${1:-}" ] && [ -d "$1" ] || return 0
	for rs_d in "$1"/*/; do
		[ -d "$rs_d" ] && resp_stop "${rs_d%/}"
	done
	rm -rf "$1"
}

# rb_run NAME PORT OPS [ARGS]: redis-benchmark -t set,get -n OPS -c 50 -d 16 -r 100000 against
# 127.0.0.1:PORT; sets NAME_set, NAME_get (ops/s), NAME_p50, NAME_p99 (the larger of the SET and
# GET figures) and NAME_mix, the 50/50 figure: 2*OPS / (OPS/set_rate + OPS/get_rate), the SETs
# and GETs together over the time of both. Fails if redis-benchmark reports errors or no rate.
rb_run() {
	rb_name=$1 rb_port=$2 rb_ops=$3
	shift 3
	rb_out=$(redis-benchmark -h 127.0.0.1 -p "$rb_port" -t set,get -n "$rb_ops" -c 50 -d 16 -r 100000 --csv "$@" 2>&1) ||
		{ echo "== redis-benchmark failed:" >&2; echo "$rb_out" >&2; return 1; }
	if echo "$rb_out" | grep -qi 'error'; then
		echo "== redis-benchmark reported errors:" >&2
		echo "$rb_out" | grep -i 'error' | head -n 5 >&2
		return 1
	fi
	# "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
	rb_vals=$(echo "$rb_out" | tr -d '"' | awk -F, -v ops="$rb_ops" '
		$1 == "SET" { s = $2; s50 = $5; s99 = $7 }
		$1 == "GET" { g = $2; g50 = $5; g99 = $7 }
		END {
			if (s <= 0 || g <= 0) exit 1
			mix = 2 * ops / (ops / s + ops / g)
			printf "%.0f %.0f %.0f %s %s\n", s, g, mix, (s50 > g50 ? s50 : g50), (s99 > g99 ? s99 : g99)
		}') || { echo "== cannot read redis-benchmark output:" >&2; echo "$rb_out" >&2; return 1; }
	set -- $rb_vals
	eval "${rb_name}_set=$1 ${rb_name}_get=$2 ${rb_name}_mix=$3 ${rb_name}_p50=$4 ${rb_name}_p99=$5"
	printf '%-18s set %s ops/s, get %s ops/s, 50/50 %s ops/s (p50 %s ms, p99 %s ms)\n' \
		"$rb_name:" "$1" "$2" "$3" "$4" "$5"
}

# ratio A B: A/B with two decimals, or n/a if either is missing or B is 0.
ratio() {
	awk -v a="${1:-}" -v b="${2:-}" 'BEGIN {
		if (a == "" || b == "" || b + 0 <= 0) print "n/a"; else printf "%.2f\n", a / b }'
}

trap cluster_stop EXIT
trap 'exit 130' INT TERM
