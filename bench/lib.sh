# Shared by the bench scripts (sourced, from the repository root): logging, a free port, the release
# build copied to a scratch folder, and the cleanup of what a script started.
#
#   source bench/lib.sh
#   bench_setup NAME        # builds, sets WORK, EARSHOT, BENCH; kills PIDS and removes WORK on exit
#   PIDS+=("$!")            # each background process the script starts
#   on_exit 'command'       # more cleanup, run before WORK is removed

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
