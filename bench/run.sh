#!/usr/bin/env bash
# Earshot's benchmark figures, in one run on this machine (load generator on the same machine).
#
#   bench/run.sh                      # from the repository root
#   DURATION=5 bench/run.sh           # a quick pass
#
# The gateway runs as a user runs it: the default log level, and the whole path measured by
# default: signed complaints -> 202 -> `case.created` received by a downstream receiver (inside the
# load generator) that answers 200 with a ticket id. The intake-only figure (no downstream) is a
# separate, labelled line, and so is the run with a second endpoint that never answers.
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

# shellcheck source=bench/lib.sh
source bench/lib.sh

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
    if [[ -n ${PG_NAME:-} ]]; then
        for db in $(timeout 30 psql "$PG_ADMIN" -qAt -c "SELECT datname FROM pg_database WHERE datname LIKE '${PG_NAME}%'" 2>/dev/null); do
            timeout 30 psql "$PG_ADMIN" -qAt -v ON_ERROR_STOP=1 \
                -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 \
                && log "dropped database $db" || log "could not drop database $db; drop it by hand"
        done
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
DOWNSTREAM_SECRET="whsec_$(head -c 24 /dev/urandom | base64 | tr -d '\n')"
export EARSHOT_BENCH_SECRET=$SECRET
SOURCE=bench
# Generous per-request timeout; every load run ends within DURATION + this.
REQ_TIMEOUT=10
# Seconds after the load during which deliveries still owed are counted.
DRAIN=5

# field LINE KEY: the value of KEY=VALUE in LINE, without a trailing "/s".
field() {
    local v
    v=$(grep -o "\\b$2=[^ ]*" <<<"$1" | head -n1 | cut -d= -f2)
    echo "${v%/s}"
}

# write_config FILE PORT DB_URL [DOWNSTREAM_URL [HUNG_URL]]: a gateway config for the benchmark,
# with a downstream endpoint when DOWNSTREAM_URL is given, and a second one that never answers
# when HUNG_URL is.
endpoint_toml() {
    printf '\n[[downstream]]\nname = "%s"\nurl = "%s"\nsecret = "%s"\n' "$1" "$2" "$DOWNSTREAM_SECRET"
}
write_config() {
    local downstream="" hung=""
    [[ -n ${4:-} ]] && downstream=$(endpoint_toml tickets "$4")
    [[ -n ${5:-} ]] && hung=$(endpoint_toml hung "$5")
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
$downstream
$hung
EOF
}

vm_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || true; }
mib() { awk -v k="$1" 'BEGIN { if (k == k + 0) printf "%.1f", k / 1024; else print k }'; }

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

# run_closed URL [LOAD OPTIONS...]: extra options such as --receiver ADDR --hung ADDR.
run_closed() {
    local url=$1
    shift
    timeout $((DURATION + REQ_TIMEOUT + DRAIN + 30)) "$BENCH" closed --url "$url" --source "$SOURCE" \
        --concurrency "$CONCURRENCY" --duration "$DURATION" --timeout "$REQ_TIMEOUT" --drain "$DRAIN" "$@"
}

run_open() {
    local url=$1
    shift
    timeout $((DURATION + REQ_TIMEOUT + DRAIN + 30)) "$BENCH" open --url "$url" --source "$SOURCE" \
        --rate "$OPEN_RATE" --duration "$DURATION" --timeout "$REQ_TIMEOUT" --drain "$DRAIN" "$@"
}


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
# 2-3. gateway on a store: intake alone; the whole path (closed loop, then open loop at OPEN_RATE);
#      the whole path beside a second endpoint that never answers. Each on a fresh database.

count_rows() {
    case $1 in
        sqlite://*) timeout 60 sqlite3 "${1#sqlite://}" 'SELECT COUNT(*) FROM cases;' ;;
        *) timeout 60 psql "$1" -qAt -v ON_ERROR_STOP=1 -c 'SELECT COUNT(*) FROM cases;' ;;
    esac
}

# new_db KIND LABEL: the URL of a fresh database.
new_db() {
    if [[ $1 == sqlite ]]; then
        echo "sqlite://$WORK/$1-$2.db"
    else
        local name="${PG_NAME}_$2"
        timeout 30 psql "$PG_ADMIN" -qAt -v ON_ERROR_STOP=1 -c "CREATE DATABASE $name" >/dev/null \
            || die "cannot create a database on $PG_ADMIN"
        echo "${PG_ADMIN%/*}/$name"
    fi
}

# checkpoint KIND: on PostgreSQL, write back the WAL owed to the run before, so that its checkpoint
# does not land in the middle of the next one.
checkpoint() {
    [[ $1 == postgres ]] || return 0
    timeout 120 psql "$PG_ADMIN" -qAt -c "CHECKPOINT" >/dev/null 2>&1 || log "could not CHECKPOINT (not superuser?)"
}

# gateway_runs KIND: sets R_* variables.
gateway_runs() {
    local kind=$1 name port config out line db rows0 rport hport base
    # a) intake alone: no downstream endpoint (a separate, labelled figure)
    name=$kind-intake-only
    db=$(new_db "$kind" intake)
    port=$(free_port)
    config="$WORK/$name.toml"
    write_config "$config" "$port" "$db"
    checkpoint "$kind"
    start_gateway "$name" "$config" "$port"
    base="http://127.0.0.1:$port"
    log "$name: closed loop, $CONCURRENCY workers, ${DURATION}s, no downstream"
    out=$(run_closed "$base")
    echo "$out" >&2
    line=$(grep '^closed:' <<<"$out")
    R_INTAKE_RATE=$(field "$line" accepted_rate)
    R_INTAKE_ACCEPTED=$(field "$line" accepted)
    R_INTAKE_ROWS=$(count_rows "$db")
    R_INTAKE_BATCH=$(batch_stats "$port")
    stop "$GW_PID"

    # b) the whole path: closed loop, then open loop
    name=$kind-whole-path
    db=$(new_db "$kind" path)
    port=$(free_port)
    rport=$(free_port)
    config="$WORK/$name.toml"
    write_config "$config" "$port" "$db" "http://127.0.0.1:$rport/events"
    checkpoint "$kind"
    start_gateway "$name" "$config" "$port"
    base="http://127.0.0.1:$port"
    log "$name: closed loop, $CONCURRENCY workers, ${DURATION}s, delivered to a receiver, then ${DRAIN}s to drain"
    top_snapshot "$name-closed"
    out=$(run_closed "$base" --receiver "127.0.0.1:$rport")
    echo "$out" >&2
    line=$(grep '^closed:' <<<"$out")
    R_RATE=$(field "$line" accepted_rate)
    R_ACCEPTED=$(field "$line" accepted)
    R_SENT=$(field "$line" sent)
    R_CLOSED_P99=$(field "$line" p99_ms)
    line=$(grep '^closed-delivery:' <<<"$out")
    R_DEL_RATE=$(field "$line" delivered_rate)
    R_DEL_SHARE=$(field "$line" delivered_share)
    R_DEL_BACKLOG=$(field "$line" backlog)
    R_DEL_ALL_MS=$(field "$line" all_delivered_after_ms)
    R_ROWS=$(count_rows "$db")
    R_BATCH=$(batch_stats "$port")
    log "$name: rows=$R_ROWS, 202s=$R_ACCEPTED; batch sizes: $R_BATCH"

    checkpoint "$kind"
    log "$name: open loop, ${OPEN_RATE}/s, ${DURATION}s, delivered to a receiver"
    sleep 2
    out=$(run_open "$base" --receiver "127.0.0.1:$rport")
    echo "$out" >&2
    line=$(grep '^open:' <<<"$out")
    R_OPEN_P50=$(field "$line" p50_ms)
    R_OPEN_P99=$(field "$line" p99_ms)
    R_OPEN_MAX=$(field "$line" max_ms)
    R_OPEN_ACH=$(field "$line" achieved)
    R_OPEN_BAD=$(( $(field "$line" other) + $(field "$line" errors) ))
    R_OPEN_LAG=$(field "$line" lag_p99_ms)
    R_OPEN_ACCEPTED=$(field "$line" accepted)
    line=$(grep '^open-delivery:' <<<"$out")
    R_OPEN_D_P50=$(field "$line" p50_ms)
    R_OPEN_D_P99=$(field "$line" p99_ms)
    R_OPEN_D_MAX=$(field "$line" max_ms)
    R_OPEN_D_SHARE=$(field "$line" delivered_share)
    R_ROWS_TOTAL=$(count_rows "$db")
    R_HWM=$(vm_kib "$GW_PID" VmHWM)
    stop "$GW_PID"

    # c) the whole path beside a second endpoint that accepts connections and never answers
    name=$kind-hung-beside
    db=$(new_db "$kind" hung)
    port=$(free_port)
    rport=$(free_port)
    hport=$(free_port)
    config="$WORK/$name.toml"
    write_config "$config" "$port" "$db" "http://127.0.0.1:$rport/events" "http://127.0.0.1:$hport/events"
    checkpoint "$kind"
    start_gateway "$name" "$config" "$port"
    base="http://127.0.0.1:$port"
    log "$name: closed loop, $CONCURRENCY workers, ${DURATION}s, a second endpoint that never answers"
    out=$(run_closed "$base" --receiver "127.0.0.1:$rport" --hung "127.0.0.1:$hport")
    echo "$out" >&2
    line=$(grep '^closed:' <<<"$out")
    R_HUNG_RATE=$(field "$line" accepted_rate)
    line=$(grep '^closed-delivery:' <<<"$out")
    R_HUNG_DEL_RATE=$(field "$line" delivered_rate)
    R_HUNG_DEL_SHARE=$(field "$line" delivered_share)
    stop "$GW_PID"
}

# save PREFIX: copies every R_* variable to PREFIX_*.
save() {
    local v
    for v in $(compgen -v R_); do
        printf -v "${1}_${v#R_}" '%s' "${!v}"
    done
}

gateway_runs sqlite
save S

run_echo echo-2
E2_RATE=$ECHO_RATE E2_P99=$ECHO_P99
E3_RATE=nan E3_P99=nan

if [[ $SKIP_PG == 1 ]]; then
    log "PostgreSQL skipped (SKIP_PG=1)"
    for v in $(compgen -v S_); do printf -v "P_${v#S_}" '%s' nan; done
else
    PG_ADMIN=$PG_URL
    PG_NAME="earshot_bench_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    log "PostgreSQL scratch databases ${PG_NAME}_*"
    gateway_runs postgres
    save P
    run_echo echo-3
    E3_RATE=$ECHO_RATE E3_P99=$ECHO_P99
fi

# ------------------------------------------------------------------------------------------------
# 4. a store with SEED_CASES cases: startup to /readyz, then peak RSS under load

if [[ $SKIP_SEED == 1 ]]; then
    log "seeded store skipped (SKIP_SEED=1)"
    SEED_ROWS=0 SEED_RATE=skipped BIG_SIZE_MIB=0 STARTUP_MS=skipped BIG_RATE=skipped BIG_BATCH=skipped
    # Not a number, so that the summary says n/a, not a verdict on a figure never taken ("nan" would
    # not do: mawk reads it as a number).
    PEAK_HWM=skipped FINAL_RSS=0
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
    ok = (op == ">=") ? (v >= t) : (op == "<=") ? (v <= t) : (v < t); print ok ? "PASS" : "MISS" }'; }
fmt_rate() { awk -v r="$1" 'BEGIN { if (r == r + 0) printf "%.0f/s", r; else print r }'; }
committed() { [[ $1 == "$2" ]] && echo "all $2 committed" || echo "MISMATCH: $2 x 202, $1 rows"; }

mean2() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == a + 0 && b == b + 0) printf "%.1f", (a + b) / 2; else print "nan" }'; }
S_ECHO=$(mean2 "$E1_RATE" "$E2_RATE")
P_ECHO=$(mean2 "$E2_RATE" "$E3_RATE")
PEAK_MIB=$(mib "$PEAK_HWM")
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')

# store_rows PREFIX LABEL FLOOR ECHO: the table rows of one store.
store_rows() {
    local p=$1 label=$2 floor=$3 echo=$4 v
    v() { local n="${p}_$1"; echo "${!n}"; }
    local hung_ratio
    hung_ratio=$(ratio "$(v HUNG_DEL_RATE)" "$(v DEL_RATE)")
    cat <<ROWS
| $label: whole path, accepted (202), closed loop | $(fmt_rate "$(v RATE)") (p99 $(v CLOSED_P99) ms; $(committed "$(v ROWS)" "$(v ACCEPTED)") of $(v SENT) sent) | ≥ $(fmt_rate "$floor") | $(verdict "$(v RATE)" ">=" "$floor") |
| $label: ratio to intake alone ($(fmt_rate "$(v INTAKE_RATE)")) / to the echo ($(fmt_rate "$echo")) | $(ratio "$(v RATE)" "$(v INTAKE_RATE)") / $(ratio "$(v RATE)" "$echo") | | |
| $label: delivered to the receiver during the load | $(fmt_rate "$(v DEL_RATE)") | | |
| $label: delivered within ${DRAIN} s after the load | $(v DEL_SHARE) of the accepted (backlog then $(v DEL_BACKLOG); all delivered after $(v DEL_ALL_MS) ms) | ≥ 0.99 | $(verdict "$(v DEL_SHARE)" ">=" 0.99) |
| $label: intake → 202 at ${OPEN_RATE}/s, open loop | p50 $(v OPEN_P50) ms, p99 $(v OPEN_P99) ms, max $(v OPEN_MAX) ms (achieved $(v OPEN_ACH)/s, $(v OPEN_BAD) not 202, generator lag p99 $(v OPEN_LAG) ms) | p99 ≤ 20 ms | $(verdict "$(v OPEN_P99)" "<=" 20) |
| $label: 202 → received at ${OPEN_RATE}/s | p50 $(v OPEN_D_P50) ms | p50 ≤ 10 ms | $(verdict "$(v OPEN_D_P50)" "<=" 10) |
| $label: 202 → received at ${OPEN_RATE}/s | p99 $(v OPEN_D_P99) ms, max $(v OPEN_D_MAX) ms ($(v OPEN_D_SHARE) delivered) | p99 ≤ 50 ms | $(verdict "$(v OPEN_D_P99)" "<=" 50) |
| $label: delivered rate with a second, hung endpoint / without | $(fmt_rate "$(v HUNG_DEL_RATE)") / $(fmt_rate "$(v DEL_RATE)") = $hung_ratio (accepted $(fmt_rate "$(v HUNG_RATE)"); $(v HUNG_DEL_SHARE) delivered in ${DRAIN} s) | ≥ 0.8 | $(verdict "$hung_ratio" ">=" 0.8) |
| $label: intake alone, no downstream (separate figure) | $(fmt_rate "$(v INTAKE_RATE)") ($(committed "$(v INTAKE_ROWS)" "$(v INTAKE_ACCEPTED)")) | | |
ROWS
}

cat <<EOF

==================================== SUMMARY ====================================
### Benchmark ($(date -u +%Y-%m-%d), \`bench/run.sh\`, DURATION=${DURATION}s, CONCURRENCY=${CONCURRENCY})

Machine: $(nproc) cores ($CPU), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, Linux $(uname -r);
load generator and downstream receiver on the same machine, everything over 127.0.0.1, HTTP/1.1, signed web complaints.
Gateway: release build, default log level (info, a line per case), default outbox settings, one downstream endpoint
answering 200 with a ticket id, \`[intake] max_batch = 512\`, rate limit off.

| Figure | Result | Target | |
|---|---|---|---|
| Echo baseline (bare axum JSON echo), closed loop, before / between / after the two stores | $(fmt_rate "$E1_RATE") / $(fmt_rate "$E2_RATE") / $(fmt_rate "$E3_RATE") (p99 ${E1_P99} / ${E2_P99} / ${E3_P99} ms) | | |
$(store_rows S SQLite 10000 "$S_ECHO")
$(store_rows P PostgreSQL 8000 "$P_ECHO")
| Peak RSS (VmHWM) under closed-loop intake, ${SEED_ROWS} cases stored | ${PEAK_MIB} MiB (throughput there $(fmt_rate "$BIG_RATE")) | < 150 MiB | $(verdict "$PEAK_MIB" "<" 150) |
| Start to \`GET /readyz\` 200, ${SEED_ROWS}-case SQLite file (${BIG_SIZE_MIB} MiB) | ${STARTUP_MS} ms | < 1,000 ms | $(verdict "$STARTUP_MS" "<" 1000) |

Row checks: SQLite $S_ROWS_TOTAL rows after both whole-path runs for $((S_ACCEPTED + S_OPEN_ACCEPTED)) x 202; PostgreSQL $P_ROWS_TOTAL rows.
Group-commit batch sizes (closed loop): SQLite intake alone $S_INTAKE_BATCH, whole path $S_BATCH; PostgreSQL intake alone $P_INTAKE_BATCH, whole path $P_BATCH; seeded SQLite $BIG_BATCH.
Peak RSS of the whole-path runs: SQLite $(mib "${S_HWM:-0}") MiB, PostgreSQL $(mib "${P_HWM:-0}") MiB; seeded run final VmRSS $(mib "${FINAL_RSS:-0}") MiB.
Seeding: $SEED_ROWS cases at $(fmt_rate "$SEED_RATE") through the store API.
=================================================================================
EOF

for f in "$WORK"/top-*.txt; do
    [[ -e $f ]] || continue
    printf '\n--- %s (mid-run) ---\n' "$(basename "$f" .txt)" >&2
    cat "$f" >&2
done

FAIL=0
[[ $S_ROWS_TOTAL == "$((S_ACCEPTED + S_OPEN_ACCEPTED))" ]] || FAIL=1
[[ $S_INTAKE_ROWS == "$S_INTAKE_ACCEPTED" ]] || FAIL=1
[[ $SKIP_PG == 1 || $P_ROWS_TOTAL == "$((P_ACCEPTED + P_OPEN_ACCEPTED))" ]] || FAIL=1
[[ $FAIL == 0 ]] || die "row counts do not match the 202 counts"
