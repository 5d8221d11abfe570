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

trap cluster_stop EXIT
trap 'exit 130' INT TERM
