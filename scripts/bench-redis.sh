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

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-benchmark >/dev/null 2>&1; then
	echo "== installing redis-server and redis-tools" >&2
	apt-get update >/dev/null && apt-get install -y redis-server redis-tools >/dev/null
fi

REDIS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gtstore-bench-redis.XXXXXX")
redis_stop() {
	if [ -r "$REDIS_DIR/redis.pid" ]; then
		pid=$(cat "$REDIS_DIR/redis.pid")
		if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = redis-server ]; then
			kill "$pid" 2>/dev/null || true
			i=0
			while [ -d "/proc/$pid" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
		fi
	fi
	rm -rf "$REDIS_DIR"
}
trap 'redis_stop; cluster_stop' EXIT

echo "== redis-server on 127.0.0.1:$REDIS_PORT, appendfsync always, in $REDIS_DIR" >&2
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$REDIS_DIR" --appendonly yes \
	--appendfsync always --save '' --daemonize yes --pidfile "$REDIS_DIR/redis.pid" \
	--logfile "$REDIS_DIR/redis.log"
i=0
until redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; do
	i=$((i + 1))
	[ $i -lt 100 ] || { echo "bench-redis: redis-server did not start" >&2; exit 1; }
	sleep 0.1
done

# redis_run NAME OPS [ARGS]: runs redis-benchmark; sets NAME_set, NAME_get (ops/s), NAME_p50,
# NAME_p99 (the larger of the SET and GET figures) and NAME_mix (the 50/50 figure).
redis_run() {
	name=$1
	shift
	ops=$1
	shift
	out=$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -t set,get -n "$ops" -c 50 -d 16 -r 100000 --csv "$@")
	# "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
	vals=$(echo "$out" | tr -d '"' | awk -F, -v ops="$ops" '
		$1 == "SET" { s = $2; s50 = $5; s99 = $7 }
		$1 == "GET" { g = $2; g50 = $5; g99 = $7 }
		END {
			if (s <= 0 || g <= 0) exit 1
			mix = 2 * ops / (ops / s + ops / g)
			printf "%.0f %.0f %.0f %s %s\n", s, g, mix, (s50 > g50 ? s50 : g50), (s99 > g99 ? s99 : g99)
		}') || { echo "bench-redis: cannot read redis-benchmark output:" >&2; echo "$out" >&2; exit 1; }
	set -- $vals
	eval "${name}_set=$1 ${name}_get=$2 ${name}_mix=$3 ${name}_p50=$4 ${name}_p99=$5"
	printf '%-18s set %s ops/s, get %s ops/s, 50/50 %s ops/s (p50 %s ms, p99 %s ms)\n' \
		"$name:" "$1" "$2" "$3" "$4" "$5"
}

echo "== redis-benchmark, $OPS operations each of SET and GET" >&2
redis_run redis "$OPS"
redis_run redis_p16 "$P16_OPS" -P 16
redis_stop
trap cluster_stop EXIT

# gt_run NAME NODES REP OPS [ARGS]: gtstore-bench on a fresh cluster; sets NAME_ops, NAME_p50, NAME_p99.
gt_run() {
	name=$1 nodes=$2 rep=$3 ops=$4
	shift 4
	cluster_start "$nodes" "$rep"
	line=$("$BENCH" --manager "$MANAGER" --ops "$ops" --read-ratio 0.5 --clients 50 --keys 100000 \
		--value-size 16 --preload "$@" | grep '^ops=')
	cluster_stop
	eval "${name}_ops=$(echo "$line" | field ops_per_s) ${name}_p50=$(echo "$line" | field p50_ms)"
	eval "${name}_p99=$(echo "$line" | field p99_ms) ${name}_err=$(echo "$line" | field errors)"
	eval "printf '%-18s 50/50 %s ops/s (p50 %s ms, p99 %s ms, %s errors)\n' \"$name:\" \"\$${name}_ops\" \
		\"\$${name}_p50\" \"\$${name}_p99\" \"\$${name}_err\""
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
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f\n", (b > 0 ? a / b : 0) }'; }
echo "ratio gtstore-7x3-p16/redis-p16: $(ratio "$gt7x3_p16_ops" "$redis_p16_mix")"
echo "ratio gtstore-1x1-p16/redis-p16: $(ratio "$gt1x1_p16_ops" "$redis_p16_mix")"
echo "ratio gtstore-1x1/redis: $(ratio "$gt1x1_ops" "$redis_mix")"
echo "ratio gtstore-7x3/redis: $(ratio "$gt7x3_ops" "$redis_mix")"
