#!/bin/sh
# `make bench-redis`: Redis, the reference single-threaded epoll server, against GTStore, in one
# run, with the same operation count, 50 clients and 16-byte values.
#
# Redis: a private redis-server on REDIS_PORT (7600) in a temporary directory, every write
# fsynced (--appendonly yes --appendfsync always, no snapshots), measured by
# `redis-benchmark -t set,get -n OPS -c 50 -d 16 -r 100000`, then again with -P 16 and 5*OPS; it is stopped
# by its pid afterwards. redis-server and redis-tools are installed with apt-get when missing.
# Redis's 50/50 figure is its SETs and GETs together over the time of both runs:
# 2*OPS / (OPS/set_rate + OPS/get_rate).
#
# GTStore: gtstore-bench, 50/50, keys preloaded, on 1 node with 1 replica (--fsync batch) and on
# 7 nodes with 3 replicas, each also with 16 requests pipelined per client.
#
# Prints every figure, writes bench/results/vs-redis.csv, and ends with the two lines
#   ratio gtstore-1x1/redis: R
#   ratio gtstore-7x3/redis: R
set -eu
. "$(dirname "$0")/bench-lib.sh"

OPS=${BENCH_OPS:-200000}
# Pipelined runs are five times longer (for both systems), so that at several
# hundred thousand operations per second they still last a few seconds.
P16_OPS=$((OPS * 5))
REDIS_PORT=${REDIS_PORT:-7600}
CSV=$BENCH_OUT/vs-redis.csv

need_redis
REDIS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gtstore-bench-redis.XXXXXX")
trap 'resp_stop_all "$REDIS_DIR"; cluster_stop' EXIT

echo "== redis-server on 127.0.0.1:$REDIS_PORT, appendfsync always, in $REDIS_DIR" >&2
resp_start redis-server "$REDIS_DIR/redis" "$REDIS_PORT" || { echo "bench-redis: redis-server did not start" >&2; exit 1; }

echo "== redis-benchmark, $OPS operations each of SET and GET" >&2
rb_run redis "$REDIS_PORT" "$OPS"
rb_run redis_p16 "$REDIS_PORT" "$P16_OPS" -P 16
resp_stop_all "$REDIS_DIR"

# gt_run NAME NODES REP OPS [ARGS]: gtstore-bench on a fresh cluster; sets NAME_ops, NAME_p50, NAME_p99.
gt_run() {
	name=$1 nodes=$2 rep=$3 ops=$4
	shift 4
	cluster_start "$nodes" "$rep"
	bench_run "$name" --manager "$MANAGER" --ops "$ops" "$@"
	cluster_stop
}

gt_run gt1x1 1 1 "$OPS"
gt_run gt7x3 7 3 "$OPS"
gt_run gt1x1_p16 1 1 "$P16_OPS" --pipeline 16
gt_run gt7x3_p16 7 3 "$P16_OPS" --pipeline 16

{
	echo "system,nodes,replicas,ops_per_s,p50_ms,p99_ms"
	echo "redis,1,1,$redis_mix,$redis_p50,$redis_p99"
	echo "redis-set,1,1,$redis_set,,"
	echo "redis-get,1,1,$redis_get,,"
	echo "redis-p16,1,1,$redis_p16_mix,$redis_p16_p50,$redis_p16_p99"
	echo "gtstore,1,1,$gt1x1_ops,$gt1x1_p50,$gt1x1_p99"
	echo "gtstore,7,3,$gt7x3_ops,$gt7x3_p50,$gt7x3_p99"
	echo "gtstore-p16,1,1,$gt1x1_p16_ops,$gt1x1_p16_p50,$gt1x1_p16_p99"
	echo "gtstore-p16,7,3,$gt7x3_p16_ops,$gt7x3_p16_p50,$gt7x3_p16_p99"
} >"$CSV"
echo
cat "$CSV"
echo
echo "ratio gtstore-7x3-p16/redis-p16: $(ratio "$gt7x3_p16_ops" "$redis_p16_mix")"
echo "ratio gtstore-1x1-p16/redis-p16: $(ratio "$gt1x1_p16_ops" "$redis_p16_mix")"
echo "ratio gtstore-1x1/redis: $(ratio "$gt1x1_ops" "$redis_mix")"
echo "ratio gtstore-7x3/redis: $(ratio "$gt7x3_ops" "$redis_mix")"
