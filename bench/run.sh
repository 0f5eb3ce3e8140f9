#!/usr/bin/env bash
# Earshot's benchmark figures, in one run on this machine (load generator on the same machine).
#
#   bench/run.sh                      # from the repository root
#   DURATION=5 bench/run.sh           # a quick pass
#
# Environment:
#   DURATION       seconds of each closed- and open-loop run (default 30)
#   CONCURRENCY    closed-loop workers, the same for the echo baseline and the gateway (default 64)
#   OPEN_RATE      open-loop offered rate, requests per second (default 1000)
#   SEED_CASES     cases stored before the RSS and startup figures (default 1000000;
#                  SKIP_SEED=1 skips that part, for a quick pass on throughput and latency)
#   PG_URL         PostgreSQL server to create a scratch database on
#                  (default postgres://postgres@127.0.0.1:5432/postgres; SKIP_PG=1 skips it)
#   BENCH_TMPDIR   where the scratch folder goes (default: $TMPDIR or /tmp); KEEP_TMP=1 keeps it
#
# Everything listens on and targets 127.0.0.1 only. Every process this script starts is stopped on
# exit, and the scratch PostgreSQL database is dropped.
set -euo pipefail

DURATION=${DURATION:-30}
CONCURRENCY=${CONCURRENCY:-64}
OPEN_RATE=${OPEN_RATE:-1000}
SEED_CASES=${SEED_CASES:-1000000}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
SKIP_PG=${SKIP_PG:-0}
SKIP_SEED=${SKIP_SEED:-0}
KEEP_TMP=${KEEP_TMP:-0}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}

# ------------------------------------------------------------------------------------------------
# build

if [[ -e /tmp/earshot-cargo.lock ]]; then
    CARGO=(flock /tmp/earshot-cargo.lock cargo)
else
    CARGO=(cargo)
fi
log "building (release)"
"${CARGO[@]}" build --release -p earshot -p earshot-bench
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
EARSHOT=$TARGET_DIR/release/earshot
BENCH=$TARGET_DIR/release/earshot-bench
[[ -x $EARSHOT && -x $BENCH ]] || die "binaries not found under $TARGET_DIR/release"

# ------------------------------------------------------------------------------------------------
# scratch space, cleanup

WORK=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/earshot-bench.XXXXXX")
# Private copies, so that a rebuild in the meantime cannot swap the binaries under a running figure.
mkdir "$WORK/bin"
cp "$EARSHOT" "$BENCH" "$WORK/bin/"
EARSHOT=$WORK/bin/earshot
BENCH=$WORK/bin/earshot-bench
PIDS=()
PG_DB=""
PG_ADMIN=""
SAMPLER_PID=""

cleanup() {
    local rc=$?
    set +e
    [[ -n $SAMPLER_PID ]] && kill "$SAMPLER_PID" 2>/dev/null
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null
        fi
        wait "$pid" 2>/dev/null
    done
    if [[ -n $PG_DB ]]; then
        timeout 30 psql "$PG_ADMIN" -qAt -v ON_ERROR_STOP=1 \
            -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 \
            && log "dropped database $PG_DB" || log "could not drop database $PG_DB; drop it by hand"
    fi
    if [[ $KEEP_TMP == 1 || $rc != 0 ]]; then
        log "scratch files kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SECRET="whsec_$(head -c 24 /dev/urandom | base64 | tr -d '\n')"
export EARSHOT_BENCH_SECRET=$SECRET
SOURCE=bench
# Generous per-request timeout; every load run ends within DURATION + this.
REQ_TIMEOUT=10

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# field LINE KEY: the value of KEY=VALUE in LINE, without a trailing "/s".
field() {
    local v
    v=$(grep -o "\\b$2=[^ ]*" <<<"$1" | head -n1 | cut -d= -f2)
    echo "${v%/s}"
}

# write_config FILE PORT DB_URL: a gateway config for the benchmark.
write_config() {
    cat >"$1" <<EOF
[server]
listen = "127.0.0.1:$2"
admin_token = "bench-admin-token-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
shutdown_grace = "5s"
templates = "$ROOT/config/templates"

[database]
url = "$3"
max_connections = 8

[channels.web]
max_body_bytes = 65536

[[channels.web.sources]]
name = "$SOURCE"
secret = "$SECRET"
rate_limit_per_sec = 1000000
rate_limit_burst = 1000000

[intake]
max_batch = 512
EOF
}

# start_gateway NAME CONFIG PORT: starts `earshot serve` in the background, waits for /readyz.
# Sets GW_PID.
start_gateway() {
    local name=$1 config=$2 port=$3
    RUST_LOG=warn "$EARSHOT" serve --config "$config" >"$WORK/$name.log" 2>&1 &
    GW_PID=$!
    PIDS+=("$GW_PID")
    for _ in $(seq 300); do
        if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/readyz" 2>/dev/null; then
            return 0
        fi
        kill -0 "$GW_PID" 2>/dev/null || { tail -n 20 "$WORK/$name.log" >&2; die "$name exited before it was ready"; }
        sleep 0.1
    done
    tail -n 20 "$WORK/$name.log" >&2
    die "$name not ready after 30 s"
}

# stop PID: SIGTERM, then SIGKILL after 15 s.
stop() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

vm_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || true; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# The earshot_batch_size histogram from /metrics, as "mean=X count=N p50<=B p99<=B".
batch_stats() {
    curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" 2>/dev/null | awk '
        /^earshot_batch_size_sum/   { sum = $2 }
        /^earshot_batch_size_count/ { count = $2 }
        /^earshot_batch_size_bucket/ {
            match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
            n++; les[n] = le; cum[n] = $2
        }
        END {
            if (count == 0) { print "none"; exit }
            p50 = ""; p99 = ""
            for (i = 1; i <= n; i++) {
                if (p50 == "" && cum[i] >= 0.5 * count) p50 = les[i]
                if (p99 == "" && cum[i] >= 0.99 * count) p99 = les[i]
            }
            printf "batches=%d mean=%.1f p50<=%s p99<=%s\n", count, sum / count, p50, p99
        }'
}

# top_snapshot NAME: one `top` frame in the middle of a run, kept for the report.
top_snapshot() {
    # The second frame: the first one's CPU figures are not over a real interval.
    (sleep "$(awk -v d="$DURATION" 'BEGIN { print d / 2 }')" \
        && top -b -n2 -d1 -w 200 | awk '/^top -/ { n++ } n == 2' | head -n 15 >"$WORK/top-$1.txt") &
    PIDS+=("$!")
}

run_closed() {
    timeout $((DURATION + REQ_TIMEOUT + 30)) "$BENCH" closed --url "$1" --source "$SOURCE" \
        --concurrency "$CONCURRENCY" --duration "$DURATION" --timeout "$REQ_TIMEOUT"
}

run_open() {
    timeout $((DURATION + REQ_TIMEOUT + 30)) "$BENCH" open --url "$1" --source "$SOURCE" \
        --rate "$OPEN_RATE" --duration "$DURATION" --timeout "$REQ_TIMEOUT"
}

count_sqlite() { timeout 60 sqlite3 "$1" 'SELECT COUNT(*) FROM cases;'; }
count_pg() { timeout 60 psql "$1" -qAt -v ON_ERROR_STOP=1 -c 'SELECT COUNT(*) FROM cases;'; }

log "scratch folder $WORK; DURATION=$DURATION CONCURRENCY=$CONCURRENCY OPEN_RATE=$OPEN_RATE; load: $(cut -d' ' -f1-3 /proc/loadavg)"

# ------------------------------------------------------------------------------------------------
# 1. echo baseline

# run_echo NAME: a closed-loop run against the bare echo server; sets ECHO_RATE and ECHO_P99.
# The echo runs right before and right after each gateway run, and each ratio is taken to the mean
# of its two neighbours: the machine's speed drifts within minutes, and a baseline from one side
# only carries that drift into the ratio.
run_echo() {
    local name=$1 port pid out line
    port=$(free_port)
    "$BENCH" echo --listen "127.0.0.1:$port" >"$WORK/$name.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 100); do grep -q '^listening on' "$WORK/$name.log" && break; sleep 0.1; done
    grep -q '^listening on' "$WORK/$name.log" || die "echo server did not start"
    log "$name: echo baseline, closed loop, $CONCURRENCY workers, ${DURATION}s"
    top_snapshot "$name"
    out=$(run_closed "http://127.0.0.1:$port")
    echo "$out" >&2
    stop "$pid"
    line=$(grep '^closed:' <<<"$out")
    ECHO_RATE=$(field "$line" accepted_rate)
    ECHO_P99=$(field "$line" p99_ms)
}

run_echo echo-1
E1_RATE=$ECHO_RATE E1_P99=$ECHO_P99

# ------------------------------------------------------------------------------------------------
# 2-3. gateway on a store: closed loop + row count, then open loop at OPEN_RATE

# gateway_runs NAME DB_URL COUNT_FN COUNT_ARG: sets R_* variables.
gateway_runs() {
    local name=$1 db=$2 count_fn=$3 count_arg=$4
    local port config out line rows0
    port=$(free_port)
    config="$WORK/$name.toml"
    write_config "$config" "$port" "$db"
    start_gateway "$name" "$config" "$port"
    local base="http://127.0.0.1:$port"
    rows0=$("$count_fn" "$count_arg")

    log "$name: closed loop, $CONCURRENCY workers, ${DURATION}s"
    top_snapshot "$name-closed"
    out=$(run_closed "$base")
    echo "$out" >&2
    line=$(grep '^closed:' <<<"$out")
    R_RATE=$(field "$line" accepted_rate)
    R_ACCEPTED=$(field "$line" accepted)
    R_SENT=$(field "$line" sent)
    R_CLOSED_P99=$(field "$line" p99_ms)
    R_ROWS=$(( $("$count_fn" "$count_arg") - rows0 ))
    R_BATCH=$(batch_stats "$port")
    log "$name: rows added=$R_ROWS, 202s=$R_ACCEPTED; batch sizes: $R_BATCH"

    if [[ -n $PG_ADMIN && $db == postgres* ]]; then
        # The closed loop leaves about 1 GB of WAL, and the checkpoint it is owed would otherwise land
        # in the open loop (p99 16.6 ms, max 130 ms in one run, against 2 ms and 8 ms after this).
        timeout 120 psql "$PG_ADMIN" -qAt -c "CHECKPOINT" >/dev/null 2>&1 || log "could not CHECKPOINT (not superuser?)"
        log "$name: CHECKPOINT before the open loop, so the closed loop's WAL is not written back during it"
    fi
    log "$name: open loop, ${OPEN_RATE}/s, ${DURATION}s"
    sleep 2
    out=$(run_open "$base")
    echo "$out" >&2
    line=$(grep '^open:' <<<"$out")
    R_OPEN_P50=$(field "$line" p50_ms)
    R_OPEN_P99=$(field "$line" p99_ms)
    R_OPEN_MAX=$(field "$line" max_ms)
    R_OPEN_ACH=$(field "$line" achieved)
    R_OPEN_BAD=$(( $(field "$line" other) + $(field "$line" errors) ))
    R_OPEN_LAG=$(field "$line" lag_p99_ms)
    R_OPEN_ACCEPTED=$(field "$line" accepted)
    R_ROWS_TOTAL=$(( $("$count_fn" "$count_arg") - rows0 ))
    R_HWM=$(vm_kib "$GW_PID" VmHWM)
    stop "$GW_PID"
}

SQLITE_FILE="$WORK/fresh.db"
gateway_runs sqlite "sqlite://$SQLITE_FILE" count_sqlite "$SQLITE_FILE"
S_RATE=$R_RATE S_ACCEPTED=$R_ACCEPTED S_SENT=$R_SENT S_ROWS=$R_ROWS S_BATCH=$R_BATCH S_CLOSED_P99=$R_CLOSED_P99
S_OPEN_P50=$R_OPEN_P50 S_OPEN_P99=$R_OPEN_P99 S_OPEN_MAX=$R_OPEN_MAX S_OPEN_ACH=$R_OPEN_ACH S_OPEN_BAD=$R_OPEN_BAD
S_OPEN_LAG=$R_OPEN_LAG S_ROWS_TOTAL=$R_ROWS_TOTAL S_ALL_ACCEPTED=$((R_ACCEPTED + R_OPEN_ACCEPTED)) S_HWM=$R_HWM

run_echo echo-2
E2_RATE=$ECHO_RATE E2_P99=$ECHO_P99
E3_RATE=nan E3_P99=nan

if [[ $SKIP_PG == 1 ]]; then
    log "PostgreSQL skipped (SKIP_PG=1)"
    P_RATE=nan P_ACCEPTED=0 P_SENT=0 P_ROWS=0 P_BATCH=skipped P_CLOSED_P99=nan
    P_OPEN_P50=nan P_OPEN_P99=nan P_OPEN_MAX=nan P_OPEN_ACH=0 P_OPEN_BAD=0 P_OPEN_LAG=nan
    P_ROWS_TOTAL=0 P_ALL_ACCEPTED=0 P_HWM=0
else
    PG_ADMIN=$PG_URL
    PG_NAME="earshot_bench_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    timeout 30 psql "$PG_ADMIN" -qAt -v ON_ERROR_STOP=1 -c "CREATE DATABASE $PG_NAME" >/dev/null \
        || die "cannot create a database on $PG_ADMIN"
    PG_DB=$PG_NAME
    PG_BENCH_URL="${PG_ADMIN%/*}/$PG_NAME"
    log "PostgreSQL scratch database $PG_NAME"
    # Start from a fresh checkpoint, so that a checkpoint owed to earlier work on the server (another
    # run, other databases) does not land in the middle of this one. Needs superuser; harmless if refused.
    timeout 120 psql "$PG_ADMIN" -qAt -c "CHECKPOINT" >/dev/null 2>&1 || log "could not CHECKPOINT first (not superuser?)"
    gateway_runs postgres "$PG_BENCH_URL" count_pg "$PG_BENCH_URL"
    P_RATE=$R_RATE P_ACCEPTED=$R_ACCEPTED P_SENT=$R_SENT P_ROWS=$R_ROWS P_BATCH=$R_BATCH P_CLOSED_P99=$R_CLOSED_P99
    P_OPEN_P50=$R_OPEN_P50 P_OPEN_P99=$R_OPEN_P99 P_OPEN_MAX=$R_OPEN_MAX P_OPEN_ACH=$R_OPEN_ACH P_OPEN_BAD=$R_OPEN_BAD
    P_OPEN_LAG=$R_OPEN_LAG P_ROWS_TOTAL=$R_ROWS_TOTAL P_ALL_ACCEPTED=$((R_ACCEPTED + R_OPEN_ACCEPTED)) P_HWM=$R_HWM
    run_echo echo-3
    E3_RATE=$ECHO_RATE E3_P99=$ECHO_P99
fi

# ------------------------------------------------------------------------------------------------
# 4. a store with SEED_CASES cases: startup to /readyz, then peak RSS under load

if [[ $SKIP_SEED == 1 ]]; then
    log "seeded store skipped (SKIP_SEED=1)"
    SEED_ROWS=0 SEED_RATE=nan BIG_SIZE_MIB=0 STARTUP_MS=nan BIG_RATE=nan BIG_BATCH=skipped
    PEAK_HWM=0 FINAL_RSS=0
else
    BIG_FILE="$WORK/seeded.db"
    log "seeding $SEED_CASES cases into $BIG_FILE"
    SEED_OUT=$(timeout 1800 "$BENCH" seed --db "sqlite://$BIG_FILE" --cases "$SEED_CASES" --batch 1000 \
        --templates "$ROOT/config/templates")
    echo "$SEED_OUT" >&2
    SEED_LINE=$(grep '^seed:' <<<"$SEED_OUT")
    SEED_RATE=$(field "$SEED_LINE" rate)
    SEED_ROWS=$(field "$SEED_LINE" rows_after)
    BIG_SIZE_MIB=$(du -cm "$BIG_FILE"* | awk 'END { print $1 }')

    BIG_PORT=$(free_port)
    BIG_CONFIG="$WORK/seeded.toml"
    write_config "$BIG_CONFIG" "$BIG_PORT" "sqlite://$BIG_FILE"
    log "startup to /readyz on $SEED_ROWS cases (${BIG_SIZE_MIB} MiB, page cache warm from seeding)"
    STARTUP_OUT=$(RUST_LOG=warn timeout 60 "$BENCH" startup --bin "$EARSHOT" --config "$BIG_CONFIG" \
        --url "http://127.0.0.1:$BIG_PORT" 2>"$WORK/startup.log")
    echo "$STARTUP_OUT" >&2
    STARTUP_MS=$(field "$(grep '^startup:' <<<"$STARTUP_OUT")" ready_ms)
    sleep 1

    start_gateway seeded "$BIG_CONFIG" "$BIG_PORT"
    log "seeded: closed loop, $CONCURRENCY workers, ${DURATION}s, sampling VmHWM every 0.5 s"
    (
        peak=0
        while kill -0 "$GW_PID" 2>/dev/null; do
            h=$(vm_kib "$GW_PID" VmHWM)
            [[ -n $h && $h -gt $peak ]] && peak=$h && echo "$peak" >"$WORK/hwm"
            sleep 0.5
        done
    ) &
    SAMPLER_PID=$!
    top_snapshot seeded
    BIG_OUT=$(run_closed "http://127.0.0.1:$BIG_PORT")
    echo "$BIG_OUT" >&2
    BIG_LINE=$(grep '^closed:' <<<"$BIG_OUT")
    BIG_RATE=$(field "$BIG_LINE" accepted_rate)
    BIG_BATCH=$(batch_stats "$BIG_PORT")
    FINAL_HWM=$(vm_kib "$GW_PID" VmHWM)
    FINAL_RSS=$(vm_kib "$GW_PID" VmRSS)
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
    PEAK_HWM=$(cat "$WORK/hwm" 2>/dev/null || echo 0)
    [[ -n $FINAL_HWM && $FINAL_HWM -gt $PEAK_HWM ]] && PEAK_HWM=$FINAL_HWM
    stop "$GW_PID"
fi

# ------------------------------------------------------------------------------------------------
# summary

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a == a + 0) printf "%.3f", a / b; else print "nan" }'; }
# verdict VALUE OP LIMIT: PASS or MISS
verdict() { awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {
    if (v != v + 0) { print "n/a"; exit }
    ok = (op == ">=") ? (v >= t) : (v < t); print ok ? "PASS" : "MISS" }'; }
fmt_rate() { awk -v r="$1" 'BEGIN { if (r == r + 0) printf "%.0f/s", r; else print r }'; }
committed() { [[ $1 == "$2" ]] && echo "all $2 committed" || echo "MISMATCH: $2 x 202, $1 rows"; }

mean2() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == a + 0 && b == b + 0) printf "%.1f", (a + b) / 2; else print "nan" }'; }
S_ECHO=$(mean2 "$E1_RATE" "$E2_RATE")
P_ECHO=$(mean2 "$E2_RATE" "$E3_RATE")
S_RATIO=$(ratio "$S_RATE" "$S_ECHO")
P_RATIO=$(ratio "$P_RATE" "$P_ECHO")
PEAK_MIB=$(mib "$PEAK_HWM")
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')

cat <<EOF

==================================== SUMMARY ====================================
### Benchmark ($(date -u +%Y-%m-%d), \`bench/run.sh\`, DURATION=${DURATION}s, CONCURRENCY=${CONCURRENCY})

Machine: $(nproc) cores ($CPU), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, Linux $(uname -r);
load generator on the same machine, everything over 127.0.0.1, HTTP/1.1, signed web complaints.
Gateway: release build, RUST_LOG=warn, \`[intake] max_batch = 512\`, no downstream, rate limit off.

| Figure | Result | Target | |
|---|---|---|---|
| Echo baseline (bare axum JSON echo), closed loop, before / between / after the two stores | $(fmt_rate "$E1_RATE") / $(fmt_rate "$E2_RATE") / $(fmt_rate "$E3_RATE") (p99 ${E1_P99} / ${E2_P99} / ${E3_P99} ms) | | |
| SQLite (WAL, synchronous=FULL) durable throughput, closed loop | $(fmt_rate "$S_RATE") (p99 ${S_CLOSED_P99} ms; $(committed "$S_ROWS" "$S_ACCEPTED") of $S_SENT sent) | ≥ 10,000/s | $(verdict "$S_RATE" ">=" 10000) |
| SQLite ratio to echo (mean of the runs before and after it: $(fmt_rate "$S_ECHO")) | $S_RATIO | ≥ 0.3 | $(verdict "$S_RATIO" ">=" 0.3) |
| SQLite latency at ${OPEN_RATE}/s, open loop | p50 ${S_OPEN_P50} ms, p99 ${S_OPEN_P99} ms, max ${S_OPEN_MAX} ms (achieved ${S_OPEN_ACH}/s, ${S_OPEN_BAD} not 202, generator lag p99 ${S_OPEN_LAG} ms) | p99 < 20 ms | $(verdict "$S_OPEN_P99" "<" 20) |
| PostgreSQL durable throughput, closed loop | $(fmt_rate "$P_RATE") (p99 ${P_CLOSED_P99} ms; $(committed "$P_ROWS" "$P_ACCEPTED") of $P_SENT sent) | ≥ 10,000/s | $(verdict "$P_RATE" ">=" 10000) |
| PostgreSQL ratio to echo (mean of the runs before and after it: $(fmt_rate "$P_ECHO")) | $P_RATIO | ≥ 0.3 | $(verdict "$P_RATIO" ">=" 0.3) |
| PostgreSQL latency at ${OPEN_RATE}/s, open loop | p50 ${P_OPEN_P50} ms, p99 ${P_OPEN_P99} ms, max ${P_OPEN_MAX} ms (achieved ${P_OPEN_ACH}/s, ${P_OPEN_BAD} not 202, generator lag p99 ${P_OPEN_LAG} ms) | p99 < 20 ms | $(verdict "$P_OPEN_P99" "<" 20) |
| Peak RSS (VmHWM) under closed-loop load, ${SEED_ROWS} cases stored | ${PEAK_MIB} MiB (throughput there $(fmt_rate "$BIG_RATE")) | < 150 MiB | $(verdict "$PEAK_MIB" "<" 150) |
| Start to \`GET /readyz\` 200, ${SEED_ROWS}-case SQLite file (${BIG_SIZE_MIB} MiB) | ${STARTUP_MS} ms | < 1,000 ms | $(verdict "$STARTUP_MS" "<" 1000) |

Row checks: SQLite $S_ROWS_TOTAL rows after both runs for $S_ALL_ACCEPTED x 202; PostgreSQL $P_ROWS_TOTAL rows for $P_ALL_ACCEPTED x 202.
Group-commit batch sizes (closed loop): SQLite $S_BATCH; PostgreSQL $P_BATCH; seeded SQLite $BIG_BATCH.
Peak RSS of the fresh-store runs: SQLite $(mib "${S_HWM:-0}") MiB, PostgreSQL $(mib "${P_HWM:-0}") MiB; seeded run final VmRSS $(mib "${FINAL_RSS:-0}") MiB.
Seeding: $SEED_ROWS cases at $(fmt_rate "$SEED_RATE") through the store API.
=================================================================================
EOF

for f in "$WORK"/top-*.txt; do
    [[ -e $f ]] || continue
    printf '\n--- %s (mid-run) ---\n' "$(basename "$f" .txt)" >&2
    cat "$f" >&2
done

FAIL=0
[[ $S_ROWS_TOTAL == "$S_ALL_ACCEPTED" ]] || FAIL=1
[[ $SKIP_PG == 1 || $P_ROWS_TOTAL == "$P_ALL_ACCEPTED" ]] || FAIL=1
[[ $FAIL == 0 ]] || die "row counts do not match the 202 counts"
