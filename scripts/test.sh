#!/usr/bin/env bash
# Runs Earshot's whole test suite against real servers.
#
# It finds or starts what the tests need and says what it does:
#   PostgreSQL  EARSHOT_TEST_POSTGRES_URL if set, else the local server on 127.0.0.1:5432, else a
#               throwaway cluster in a temporary folder (installing Debian's postgresql if missing).
#   Dovecot     the IMAP server (Debian's dovecot-imapd, installed if missing); each email test starts
#               its own on a loopback port with all state in a temporary folder.
#   SMTP sink   aiosmtpd from PyPI in a virtualenv under target/test-venv (made if missing); each email
#               test starts its own.
# With CI=true a server that cannot be found or started fails the run; elsewhere the tests that need
# it are skipped and say so.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "[test.sh] $*" >&2; }
is_ci() { [ "${CI:-}" = "true" ]; }
CLEANUP=()
cleanup() { local c; for c in "${CLEANUP[@]}"; do eval "$c" || true; done; }
trap cleanup EXIT

export EARSHOT_TEST_RUN_ID="r$$$(date +%s)"

# --- PostgreSQL -------------------------------------------------------------------------------
pg_ok() { command -v psql >/dev/null && psql "$1" -Atqc 'SELECT 1' >/dev/null 2>&1; }

find_pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }

start_private_pg() {
    local bin dir port
    bin=$(find_pg_bin)
    if [ -z "$bin" ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            say "PostgreSQL is not installed: installing Debian's postgresql (apt-get)."
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
            bin=$(find_pg_bin)
        fi
    fi
    [ -n "$bin" ] || return 1
    dir=$(mktemp -d /tmp/earshot-pg.XXXXXX)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # initdb refuses to run as root; the postgres user exists wherever Debian's package is installed.
    local as=()
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; as=(runuser -u postgres --); fi
    say "Starting a private PostgreSQL in $dir on 127.0.0.1:$port."
    "${as[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=on" start >/dev/null
    CLEANUP+=("${as[*]} $bin/pg_ctl -D $dir/data -m fast stop >/dev/null; rm -rf $dir")
    export EARSHOT_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

PG_URL=${EARSHOT_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
if ! command -v psql >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "psql is missing: installing postgresql-client (apt-get)."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client >/dev/null || true
fi
if pg_ok "$PG_URL"; then
    say "PostgreSQL: using $PG_URL"
    export EARSHOT_TEST_POSTGRES_URL="$PG_URL"
else
    if [ -z "${EARSHOT_TEST_POSTGRES_URL:-}" ] && command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        say "PostgreSQL at $PG_URL does not answer: starting the local cluster."
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start 2>/dev/null || true
        sleep 1
    fi
    if pg_ok "$PG_URL"; then
        say "PostgreSQL: using $PG_URL"
        export EARSHOT_TEST_POSTGRES_URL="$PG_URL"
    elif start_private_pg && pg_ok "$EARSHOT_TEST_POSTGRES_URL"; then
        say "PostgreSQL: using $EARSHOT_TEST_POSTGRES_URL"
    elif is_ci; then
        say "FAIL: CI=true and no PostgreSQL could be found or started."
        exit 1
    else
        say "WARNING: no PostgreSQL; the PostgreSQL tests will be skipped (they print SKIPPED)."
    fi
fi
drop_run_dbs() {
    pg_ok "${EARSHOT_TEST_POSTGRES_URL:-}" || return 0
    psql "$EARSHOT_TEST_POSTGRES_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'earshot_t_${EARSHOT_TEST_RUN_ID,,}_%'" |
        while read -r db; do psql "$EARSHOT_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null; done
}
CLEANUP=("drop_run_dbs" "${CLEANUP[@]}")

# --- Dovecot and the SMTP sink (started by the tests themselves) ---------------------------------
APT_UPDATED=0
apt_install() {
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
    if [ "$APT_UPDATED" = 0 ]; then apt-get update -qq && APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
DOVECOT=${EARSHOT_TEST_DOVECOT:-$(command -v dovecot || true)}
if [ -z "$DOVECOT" ]; then
    say "Dovecot is not installed: installing Debian's dovecot-imapd (apt-get)."
    apt_install dovecot-imapd || true
    DOVECOT=$(command -v dovecot || true)
fi
if [ -n "$DOVECOT" ]; then
    say "Dovecot: $DOVECOT"
    export EARSHOT_TEST_DOVECOT="$DOVECOT"
elif is_ci; then
    say "FAIL: CI=true and Dovecot could not be installed."
    exit 1
else
    say "WARNING: no Dovecot; the email tests will be skipped (they print SKIPPED)."
fi
VENV=${EARSHOT_TEST_VENV:-target/test-venv}
# Absolute, so that it still resolves where a step runs from another folder (schemathesis below).
case $VENV in /*) ;; *) VENV=$PWD/$VENV ;; esac
if ! { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import aiosmtpd' 2>/dev/null; }; then
    say "Making $VENV with aiosmtpd (pip)."
    { python3 -m venv "$VENV" || { apt_install python3-venv && python3 -m venv "$VENV"; }; } &&
        "$VENV/bin/pip" install -q aiosmtpd || true
fi
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import aiosmtpd' 2>/dev/null; then
    say "SMTP sink: aiosmtpd in $VENV"
    export EARSHOT_TEST_SMTPD_PYTHON="$VENV/bin/python"
elif is_ci; then
    say "FAIL: CI=true and the aiosmtpd virtualenv could not be made."
    exit 1
else
    say "WARNING: no aiosmtpd; the email tests will be skipped (they print SKIPPED)."
fi

# --- The API against its own OpenAPI document (schemathesis) ---------------------------------------
# The running gateway, with the admin token, fuzzed from /openapi.json: every answer must be one the
# document declares, in the shape it declares, and no valid request may be refused.
if ! "$VENV/bin/python" -c 'import schemathesis' 2>/dev/null; then
    say "Installing schemathesis in $VENV (pip)."
    "$VENV/bin/pip" install -q schemathesis || true
fi
if [ -x "$VENV/bin/schemathesis" ]; then
    say "Building the gateway for schemathesis."
    cargo build --bin earshot
    ST_DIR=$(mktemp -d /tmp/earshot-schemathesis.XXXXXX)
    ST_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    sed -e "s|url = \"sqlite://data/earshot.db\"|url = \"sqlite://$ST_DIR/earshot.db\"|" \
        -e "s|listen = \"127.0.0.1:8080\"|listen = \"127.0.0.1:$ST_PORT\"|" \
        -e "s|templates = \"templates\"|templates = \"$PWD/config/templates\"|" \
        config/earshot.example.toml >"$ST_DIR/earshot.toml"
    "${CARGO_TARGET_DIR:-target}/debug/earshot" serve --config "$ST_DIR/earshot.toml" >"$ST_DIR/gateway.log" 2>&1 &
    ST_PID=$!
    CLEANUP+=("kill $ST_PID 2>/dev/null; rm -rf $ST_DIR")
    for _ in $(seq 100); do
        curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$ST_PORT/readyz" 2>/dev/null && break
        sleep 0.1
    done
    say "schemathesis against http://127.0.0.1:$ST_PORT/openapi.json"
    # Run from the scratch folder: schemathesis keeps a cache (.schemathesis/) where it runs, and the
    # working tree is no place for it.
    if ! (cd "$ST_DIR" && "$VENV/bin/schemathesis" run "http://127.0.0.1:$ST_PORT/openapi.json" \
        -H "Authorization: Bearer dev-admin-token-change-me" --max-examples 20 --seed 1); then
        say "FAIL: schemathesis found answers the OpenAPI document does not declare (above)."
        exit 1
    fi
    kill "$ST_PID" 2>/dev/null || true
elif is_ci; then
    say "FAIL: CI=true and schemathesis could not be installed."
    exit 1
else
    say "WARNING: no schemathesis; the OpenAPI check is SKIPPED."
fi

# --- The suite ----------------------------------------------------------------------------------
say "Running cargo test --workspace (the first build takes a few minutes)."
cargo test --workspace "$@"
