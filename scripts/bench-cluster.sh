#!/bin/sh
# `make bench`: SPEC section 9 sequences 5 and 6 on private clusters.
#
#   5. BENCH_OPS (200000) operations, 50% reads, 50 clients, on 7 nodes with 1, 3 and 5
#      replicas -> bench/results/throughput.csv and throughput.svg;
#   6. BALANCE_KEYS (100000) distinct inserts on 7 nodes with 1 replica
#      -> bench/results/balance.csv, balance.svg and a text histogram.
#
# Each throughput run first writes every key of the key space once, unmeasured
# (BENCH_PRELOAD=0 skips that), so that reads find values.
set -eu
. "$(dirname "$0")/bench-lib.sh"

BENCH_OPS=${BENCH_OPS:-200000}
BALANCE_KEYS=${BALANCE_KEYS:-100000}
BENCH_PRELOAD=${BENCH_PRELOAD:-1}
preload=
[ "$BENCH_PRELOAD" = 0 ] || preload=--preload

rm -f "$BENCH_OUT/throughput.csv" "$BENCH_OUT/balance.csv"
for rep in 1 3 5; do
	cluster_start 7 "$rep"
	"$BENCH" --manager "$MANAGER" --ops "$BENCH_OPS" --read-ratio 0.5 --clients 50 --keys 100000 \
		--value-size 16 $preload --label "7x$rep" --csv "$BENCH_OUT/throughput.csv"
	cluster_stop
done
"$BENCH" chart throughput "$BENCH_OUT/throughput.csv" "$BENCH_OUT/throughput.svg"
echo
cat "$BENCH_OUT/throughput.csv"
echo

cluster_start 7 1
"$BENCH" --manager "$MANAGER" --ops "$BALANCE_KEYS" --sequential --clients 50 --value-size 16 \
	--label balance --node-csv "$BENCH_OUT/balance.csv"
cluster_stop
echo
"$BENCH" chart balance "$BENCH_OUT/balance.csv" "$BENCH_OUT/balance.svg"
