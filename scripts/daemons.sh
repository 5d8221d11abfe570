#!/bin/sh
# Pidfile helpers for the Makefile: find, signal and wait for GTStore daemons.
#
# A pid is only ever signalled when /proc/PID/comm names the expected program
# (comm is truncated to 15 characters: "gtstore-storage", "gtstore-manager"),
# so a stale pidfile whose pid now belongs to another process is harmless.
#
# Usage:
#   daemons.sh pid  COMM PIDFILE        print the live pid, exit 1 if not running
#   daemons.sh term COMM PIDFILE...     SIGTERM each live one, wait until all exit
#   daemons.sh kill COMM PIDFILE...     SIGKILL each live one, wait until all exit
#   daemons.sh stop RUN_DIR             term every storage node, then the manager
#
# Waits poll every 0.1 s for up to $STOP_TIMEOUT seconds (default 60); on
# timeout the still-running pids are listed on stderr and the exit status is 1.
set -eu

STOP_TIMEOUT=${STOP_TIMEOUT:-60}
prog=${0##*/}

# live_pid COMM PIDFILE: print the pid in PIDFILE if it is a live COMM process.
live_pid() {
	[ -r "$2" ] || return 1
	pid=
	read -r pid 2>/dev/null <"$2" || [ -n "$pid" ] || return 1
	case $pid in '' | *[!0-9]*) return 1 ;; esac
	alive "$1" "$pid" || return 1
	echo "$pid"
}

# alive COMM PID: PID exists, is not a zombie, and runs COMM.
alive() {
	comm=
	read -r comm 2>/dev/null <"/proc/$2/comm" || return 1
	[ "$comm" = "$1" ] || return 1
	# Field 3 of /proc/PID/stat is the state; comm (field 2) has no spaces here.
	state=$(cut -d' ' -f3 "/proc/$2/stat" 2>/dev/null) || return 1
	[ "$state" != Z ] && [ "$state" != X ]
}

# signal_and_wait SIG COMM PIDFILE...: signal the live ones, wait for them.
signal_and_wait() {
	sig=$1 comm_want=$2
	shift 2
	pids=
	for f in "$@"; do
		if p=$(live_pid "$comm_want" "$f"); then
			kill "-$sig" "$p" 2>/dev/null || true
			pids="$pids $p"
		fi
	done
	[ -n "$pids" ] || return 0
	ticks=$((STOP_TIMEOUT * 10))
	while :; do
		left=
		for p in $pids; do
			if alive "$comm_want" "$p"; then left="$left $p"; fi
		done
		[ -n "$left" ] || return 0
		if [ "$ticks" -le 0 ]; then
			echo "$prog: $comm_want still running after ${STOP_TIMEOUT}s:$left" >&2
			return 1
		fi
		ticks=$((ticks - 1))
		sleep 0.1
	done
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
pid)
	[ $# -eq 2 ] || { echo "usage: $prog pid COMM PIDFILE" >&2; exit 64; }
	live_pid "$1" "$2"
	;;
term | kill)
	[ $# -ge 2 ] || { echo "usage: $prog $cmd COMM PIDFILE..." >&2; exit 64; }
	if [ "$cmd" = term ]; then s=TERM; else s=KILL; fi
	signal_and_wait "$s" "$@"
	;;
stop)
	[ $# -eq 1 ] || { echo "usage: $prog stop RUN_DIR" >&2; exit 64; }
	[ -d "$1" ] || exit 0
	# Nodes first, all at once (each leaves gracefully), then the manager.
	set -- "$1" "$1"/node*/gtstore-storage.pid
	run_dir=$1
	shift
	status=0
	if [ -e "$1" ]; then
		signal_and_wait TERM gtstore-storage "$@" || status=1
	fi
	signal_and_wait TERM gtstore-manager "$run_dir/manager/gtstore-manager.pid" || status=1
	exit $status
	;;
*)
	echo "usage: $prog pid|term|kill|stop ..." >&2
	exit 64
	;;
esac
