# Shared by the bench scripts (sourced, from the repository root): logging, a free port, the release
# build copied to a scratch folder, and the cleanup of what a script started.
#
#   source bench/lib.sh
#   bench_setup NAME        # builds, sets WORK, EARSHOT, BENCH; kills PIDS and removes WORK on exit
#   PIDS+=("$!")            # each background process the script starts
#   on_exit 'command'       # more cleanup, run before WORK is removed
#   start_gateway NAME CONFIG PORT; stop "$GW_PID"
#   web_baseline SECS WORKERS   # the web channel's whole path in the same run, a ratio's baseline

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }

PIDS=()
EXIT_HOOKS=()
on_exit() { EXIT_HOOKS+=("$1"); }

bench_cleanup() {
    set +e
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    sleep 0.5
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    for hook in "${EXIT_HOOKS[@]}"; do eval "$hook"; done
    [[ -n ${WORK:-} ]] && rm -rf "$WORK"
}

# bench_setup NAME: the release binaries, built (another build holding /tmp/earshot-cargo.lock is
# waited for) and copied to a scratch folder, so that a rebuild meanwhile cannot swap them under a
# running figure.
bench_setup() {
    local cargo=(cargo)
    [[ -e /tmp/earshot-cargo.lock ]] && cargo=(flock /tmp/earshot-cargo.lock cargo)
    log "building (release)"
    "${cargo[@]}" build --release -q -p earshot -p earshot-bench
    local target=${CARGO_TARGET_DIR:-$PWD/target}
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/earshot-$1-bench.XXXXXX")
    mkdir "$WORK/bin"
    cp "$target/release/earshot" "$target/release/earshot-bench" "$WORK/bin/"
    EARSHOT=$WORK/bin/earshot
    BENCH=$WORK/bin/earshot-bench
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

# start_gateway NAME CONFIG PORT: starts `earshot serve` in the background, waits for /readyz.
# Sets GW_PID.
start_gateway() {
    local name=$1 config=$2 port=$3
    # The default log level (info: a line per case), as an operator runs it.
    "$EARSHOT" serve --config "$config" >"$WORK/$name.log" 2>&1 &
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

# web_baseline SECS WORKERS: the web channel's closed loop (WORKERS workers, SECS s) on a gateway of its
# own, whole path (the load generator's receiver is the ticket store), in the same run as a channel's
# figure, whose ratio it is the baseline of. Prints the `web-baseline closed…` lines.
web_baseline() {
    local secs=$1 workers=$2 port rport secret ticket
    port=$(free_port)
    rport=$(free_port)
    secret="whsec_$(head -c 24 /dev/urandom | base64 | tr -d '\n')"
    ticket="whsec_$(head -c 24 /dev/urandom | base64 | tr -d '\n')"
    cat >"$WORK/web-baseline.toml" <<EOT
[server]
listen = "127.0.0.1:$port"

[database]
url = "sqlite://$WORK/web-baseline.db"

[[channels.web.sources]]
name = "bench"
secret = "$secret"
rate_limit_per_sec = 1000000
rate_limit_burst = 1000000

[[downstream]]
name = "tickets"
url = "http://127.0.0.1:$rport/events"
secret = "$ticket"
EOT
    start_gateway web-baseline "$WORK/web-baseline.toml" "$port"
    EARSHOT_BENCH_SECRET=$secret "$BENCH" closed --url "http://127.0.0.1:$port" --source bench --concurrency "$workers" \
        --duration "$secs" --receiver "127.0.0.1:$rport" --drain 5 2>/dev/null | grep -E '^closed(-delivery)?:' | sed 's/^/web-baseline /'
    stop "$GW_PID"
}
