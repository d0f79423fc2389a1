#!/usr/bin/env bash
# The CPU figures of docs/performance.md, in one quiet window (about 11 minutes, 2 cores).
#
#   docs/measure_cpu.sh OUT_DIR            # the measurement: nothing else may run meanwhile
#   docs/measure_cpu.sh OUT_DIR --smoke    # tiny durations: checks that every step runs
#   docs/measure_cpu.sh OUT_DIR --dry-run  # prints the commands, runs and writes nothing
#
# Runs, one after the other, each as its own process (so no benchmark inherits
# another's threads, heap or loaded model, and each JSON's `command` is the
# exact line that reproduces it):
#
#   wake-100hz   the precise wake at 100 Hz: uvloop and asyncio, loads none/thread/process,
#                spins 0 1 2 3 ms, 3 s a row (24 rows, ~80 s)
#   wake-10hz    the same at 10 Hz on uvloop, the controller's loop (12 rows, ~40 s)
#   loop-100hz   the control loop at 100 Hz: idle, saturated, slow-encoder; the note's loop
#                and the controller with vl_worker thread and process, 10 s a row (1000 ticks:
#                what "99.9 % on time" needs; 9 rows, ~110 s: ~2 s of start-up and warm-up a row)
#   loop-10hz    the same at 10 Hz, 15 s a row (150 ticks, so a row's p99 is not just its
#                one worst tick; 9 rows, ~160 s)
#   loop-rt-100hz  the controller alone with rt_priority 0 and 50 (SCHED_FIFO for its loop
#                thread) beside each other, both VL lanes, saturated and slow-encoder, 10 s a
#                row (8 rows, ~110 s); the script runs as root here, else the rows say refused
#   loop-rt-10hz the same at 10 Hz, saturated only, 15 s a row (4 rows, ~75 s)
#   seed-table   the note's table: virtual rows and real rows, 6 s a real row (~25 s)
#   vl           VL encode, 1 and 5 images, 100 timed runs each (~15 s)
#   act          the action expert, 500 timed runs (~5 s)
#   tick-cost    the safety filter's questions, an empty and a numpy call, warm and after
#                a 10 ms sleep, 300 calls each (~20 s)
#   camera       a WebRTC camera: a child process publishes 30 fps over WHIP on loopback,
#                frame-to-slot latency and CPU per frame, 10 s after 2 s untimed (~16 s)
#
# Each writes OUT_DIR/NAME.json (rows, machine, versions, date, command line,
# the 1-minute load average) and OUT_DIR/NAME.md (the Markdown table and its
# notes, as docs/performance.md takes them); OUT_DIR/commands.txt lists every
# command with its exit status and duration. PYTHON (default: python) is the
# interpreter; it must import this checkout's `controller` (the script runs
# from the repository root). Exit status: 0 when every step succeeded, 1 when
# any failed (the others still ran), 2 on bad arguments.
set -u

usage() { echo "usage: $0 OUT_DIR [--smoke | --dry-run]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
out=$1
smoke=0
dry=0
case "${2-}" in
    "") ;;
    --smoke) smoke=1 ;;
    --dry-run) dry=1 ;;
    *) usage ;;
esac
python=${PYTHON:-python}

if [ "$dry" = 0 ]; then
    if [ -e "$out" ] && [ ! -d "$out" ]; then
        echo "$0: $out exists and is not a directory" >&2; exit 2
    fi
    if [ -d "$out" ] && [ -n "$(ls -A "$out")" ]; then
        echo "$0: $out is not empty (one directory per run, so runs are never mixed)" >&2; exit 2
    fi
    mkdir -p "$out" || exit 2
    out=$(cd "$out" && pwd)
fi
cd "$(dirname "$0")/.." || exit 2

if [ "$smoke" = 1 ]; then
    # Every step with tiny durations: a check that the script runs, never figures.
    wake_s=0.3; loop100_s=0.3; loop10_s=0.3; seed_s=0.3; seed_virtual=(--virtual-seconds 5)
    vl_runs=(--iters 2 --warmup 0); act_runs=(--iters 5 --warmup 1); tick_runs=(--calls 10)
    camera_runs=(--seconds 1 --warmup 0.5)
    echo "SMOKE RUN: tiny durations; these figures are not results." > "$out/SMOKE.txt"
else
    wake_s=3; loop100_s=10; loop10_s=15; seed_s=6; seed_virtual=()
    vl_runs=(--iters 100); act_runs=(); tick_runs=(); camera_runs=(--seconds 10 --fps 30)
fi

if [ "$dry" = 0 ]; then
    load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?")
    echo "measure_cpu: results in $out; 1-minute load average now $load (quiet: below ~0.3)"
    if [ "$smoke" = 0 ] && awk -v l="$load" 'BEGIN { exit !(l + 0 > 0.5) }'; then
        echo "measure_cpu: warning: the machine is busy; figures under load are not results" >&2
    fi
fi

failed=0
begin=$SECONDS
step() {
    # step NAME ARGS...: python -m controller.bench ARGS --json OUT/NAME.json > OUT/NAME.md
    local name=$1; shift
    if [ "$dry" = 1 ]; then
        echo "python -m controller.bench $* --json $out/$name.json"
        return
    fi
    local t0=$SECONDS status
    echo "measure_cpu: $name ..."
    "$python" -m controller.bench "$@" --json "$out/$name.json" > "$out/$name.md"
    status=$?
    printf '%s\t%s\t%ss\t%s\n' "$name" "$status" "$((SECONDS - t0))" \
        "python -m controller.bench $* --json $name.json" >> "$out/commands.txt"
    echo "measure_cpu: $name: exit $status, $((SECONDS - t0)) s"
    [ "$status" = 0 ] || failed=1
}

step wake-100hz wake --hz 100 --spin-ms 0 1 2 3 --event-loop uvloop asyncio \
    --load none thread process --seconds "$wake_s"
step wake-10hz wake --hz 10 --spin-ms 0 1 2 3 --event-loop uvloop \
    --load none thread process --seconds "$wake_s"
step loop-100hz loop --hz 100 --scenario idle saturated slow-encoder --variants all \
    --seconds "$loop100_s"
step loop-10hz loop --hz 10 --scenario idle saturated slow-encoder --variants all \
    --seconds "$loop10_s"
step loop-rt-100hz loop --hz 100 --scenario saturated slow-encoder --design controller \
    --modes vl_worker=thread,process --modes rt_priority=0,50 --seconds "$loop100_s"
step loop-rt-10hz loop --hz 10 --scenario saturated --design controller \
    --modes vl_worker=thread,process --modes rt_priority=0,50 --seconds "$loop10_s"
step seed-table seed-table --seconds "$seed_s" "${seed_virtual[@]}"
step vl vl --images 1 5 "${vl_runs[@]}"
step act act "${act_runs[@]}"
step tick-cost tick-cost "${tick_runs[@]}"
step camera camera "${camera_runs[@]}"

[ "$dry" = 1 ] && exit 0
if [ "$failed" = 0 ]; then
    echo "measure_cpu: done in $((SECONDS - begin)) s; every step succeeded"
else
    echo "measure_cpu: done in $((SECONDS - begin)) s; some steps FAILED (see commands.txt)"
fi
exit "$failed"
