#!/bin/sh
# `make bench-scale`: how GTStore scales with data and with nodes.
#
#   1. SCALE_KEYS (1000000) distinct keys of 16-byte values written to one node: resident
#      memory per key, (VmRSS after the load - VmRSS before) / keys;
#   2. start-up time with those keys: the node is killed (SIGKILL) and `make restart` is timed
#      until it returns, i.e. until the node has replayed its logs and registered;
#   3. ops/s of BENCH_OPS (200000) operations, 50/50, 50 clients, keys preloaded, on 1, 3, 5
#      and 7 nodes with 3 replicas (fewer where there are fewer nodes).
#
# Writes bench/results/scale.csv (metric,nodes,replicas,value) and prints it.
set -eu
. "$(dirname "$0")/bench-lib.sh"

SCALE_KEYS=${SCALE_KEYS:-1000000}
OPS=${BENCH_OPS:-200000}
CSV=$BENCH_OUT/scale.csv
echo "metric,nodes,replicas,value" >"$CSV"

cluster_start 1 1
echo "== writing $SCALE_KEYS keys to one node" >&2
out=$("$BENCH" --manager "$MANAGER" --ops "$SCALE_KEYS" --sequential --clients 50 --pipeline 4 \
	--value-size 16 --label scale --run-dir "$BENCH_RUN_DIR")
echo "$out"
node=$(echo "$out" | grep '^node=1 ')
keys=$(echo "$node" | field keys)
echo "bytes_per_key,1,1,$(echo "$node" | field bytes_per_key)" >>"$CSV"
echo "rss_kb,1,1,$(echo "$node" | field rss_kb)" >>"$CSV"
echo "keys,1,1,$keys" >>"$CSV"
echo "load_ops_per_s,1,1,$(echo "$out" | field ops_per_s)" >>"$CSV"

echo "== the same $SCALE_KEYS keys and 16-byte values in redis-server (no persistence)" >&2
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
	apt-get update >/dev/null && apt-get install -y redis-server redis-tools >/dev/null
fi
REDIS_PORT=${REDIS_PORT:-7600}
REDIS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gtstore-bench-redis.XXXXXX")
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$REDIS_DIR" --appendonly no --save '' \
	--daemonize yes --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log"
i=0
until redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; do
	i=$((i + 1))
	[ $i -lt 100 ] || { echo "bench-scale: redis-server did not start" >&2; exit 1; }
	sleep 0.1
done
rpid=$(cat "$REDIS_DIR/redis.pid")
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
before=$(rss "$rpid")
awk -v n="$SCALE_KEYS" 'BEGIN { for (i = 0; i < n; i++) { k = "key" i
	printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$16\r\nxxxxxxxxxxxxxxxx\r\n", length(k), k } }' |
	redis-cli -p "$REDIS_PORT" --pipe >/dev/null
after=$(rss "$rpid")
rkeys=$(redis-cli -p "$REDIS_PORT" dbsize)
kill "$rpid"
rm -rf "$REDIS_DIR"
redis_bpk=$(awk -v a="$after" -v b="$before" -v k="$rkeys" 'BEGIN { printf "%.1f", (a - b) * 1024 / k }')
gt_bpk=$(echo "$node" | field bytes_per_key)
echo "redis keys=$rkeys rss_before_kb=$before rss_kb=$after bytes_per_key=$redis_bpk"
echo "redis_bytes_per_key,1,1,$redis_bpk" >>"$CSV"
echo "ratio gtstore/redis bytes per key: $(awk -v g="$gt_bpk" -v r="$redis_bpk" 'BEGIN { printf "%.2f", g / r }')"

echo "== restarting the node on $keys keys" >&2
bench_make kill NODE=1
t0=$(date +%s.%N)
bench_make restart NODE=1 >/dev/null
t1=$(date +%s.%N)
startup=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
echo "startup_s=$startup keys=$keys"
echo "startup_s,1,1,$startup" >>"$CSV"
"$BENCH" --manager "$MANAGER" --ops 0 --node-stats --quiet | grep '^node='
cluster_stop

for nodes in 1 3 5 7; do
	rep=3
	[ "$nodes" -ge 3 ] || rep=$nodes
	cluster_start "$nodes" "$rep"
	line=$("$BENCH" --manager "$MANAGER" --ops "$OPS" --read-ratio 0.5 --clients 50 --keys 100000 \
		--value-size 16 --preload --label "scale-${nodes}x$rep" | grep '^ops=')
	cluster_stop
	echo "nodes=$nodes replicas=$rep $line"
	echo "ops_per_s,$nodes,$rep,$(echo "$line" | field ops_per_s)" >>"$CSV"
	echo "p99_ms,$nodes,$rep,$(echo "$line" | field p99_ms)" >>"$CSV"
done
echo
cat "$CSV"
