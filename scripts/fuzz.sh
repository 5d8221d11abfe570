#!/bin/sh
# Runs fuzz targets of fuzz/ (cargo-fuzz) one after another: `make fuzz` and `make fuzz-short`.
#
# Usage: fuzz.sh SECONDS TARGET...
#
# A target first runs every input of fuzz/corpus/TARGET (the committed seeds) and
# fuzz/regressions/TARGET (inputs that once failed, if any), then fuzzes for SECONDS seconds,
# growing fuzz/work/TARGET (ignored by git). libFuzzer's output goes to fuzz/work/TARGET.log and
# one line per target is printed. A failure (a panic or failed property, one input running over
# 10 s, or 2 GB of RSS) prints the end of the log, leaves the input in fuzz/artifacts/TARGET/ and
# makes the exit status 1. The last line is `fuzz: N passed, N failed`.
#
# CARGO (default cargo); CARGO_FUZZ_FLAGS, passed to `cargo fuzz build` and `run` (default
# --sanitizer none: the sanitizers need a nightly compiler, libFuzzer's coverage guidance does not).
set -eu

cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
CARGO_FUZZ_FLAGS=${CARGO_FUZZ_FLAGS:---sanitizer none}
secs=$1
shift

# Every target at once (cargo fuzz builds one or all); `run` then finds them built.
# shellcheck disable=SC2086 # the flags are words
$CARGO fuzz build $CARGO_FUZZ_FLAGS
passed=0
failed=0
for t in "$@"; do
	mkdir -p "fuzz/work/$t" "fuzz/artifacts/$t"
	log="fuzz/work/$t.log"
	dirs="fuzz/work/$t fuzz/corpus/$t"
	[ -d "fuzz/regressions/$t" ] && dirs="$dirs fuzz/regressions/$t"
	# shellcheck disable=SC2086
	if $CARGO fuzz run $CARGO_FUZZ_FLAGS "$t" $dirs -- \
		-max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
		passed=$((passed + 1))
		done_line=$(grep '^Done [0-9]* runs' "$log" | tail -n 1)
		cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
		echo "fuzz $t: ${done_line#Done } ($cov, corpus fuzz/work/$t)"
	else
		failed=$((failed + 1))
		tail -n 40 "$log" >&2
		echo "fuzz $t: FAILED (log $log, input in fuzz/artifacts/$t/)" >&2
	fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
