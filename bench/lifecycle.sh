#!/usr/bin/env bash
# The way back, measured (issue: two-way cases). The bench plays the ticket store: it signs status
# events with a [[downstream]] secret and alternates each case in_progress <-> awaiting_customer,
# so that every event makes one customer update (both statuses are in [lifecycle] notify by default).
#
#   bench/lifecycle.sh                      # from the repository root
#   CLOSED_SECS=10 OPEN_SECS=10 bench/lifecycle.sh
#
# Figures, each on a gateway run as a user runs it (default config and log level):
#   events accepted/s, closed loop, whole path (every accepted event's update delivered), on SQLite
#   and PostgreSQL, web cases with a callback_url;
#   event accepted -> the customer's update received, open loop at RATE events/s: web callbacks
#   (SQLite and PostgreSQL), and email through the local SMTP server (aiosmtpd, SQLite; the email
#   cases are ingested first through Dovecot, as a user's mailbox would be).
#
# Environment: CASES (1000), CONCURRENCY (32), CLOSED_SECS (20), RATE (200), OPEN_SECS (20),
# EMAIL_CASES (2000), EMAIL_SECS (10), PG_URL (postgres://postgres@127.0.0.1:5432/postgres;
# SKIP_PG=1 skips it), SKIP_EMAIL=1. Everything listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
CASES=${CASES:-1000}
CONCURRENCY=${CONCURRENCY:-32}
CLOSED_SECS=${CLOSED_SECS:-20}
RATE=${RATE:-200}
OPEN_SECS=${OPEN_SECS:-20}
EMAIL_CASES=${EMAIL_CASES:-2000}
EMAIL_SECS=${EMAIL_SECS:-10}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
SKIP_PG=${SKIP_PG:-0}
SKIP_EMAIL=${SKIP_EMAIL:-0}

# shellcheck source=bench/lib.sh
source bench/lib.sh
say() { log "$@"; }
# shellcheck source=bench/mailservers.sh
source bench/mailservers.sh

bench_setup lifecycle
# Dovecot's unprivileged processes reach the state folder it keeps under it.
chmod 755 "$WORK"
PG_DBS=()
on_exit 'for db in "${PG_DBS[@]}"; do psql "$PG_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1; done'

SOURCE_SECRET="whsec_$(head -c 24 /dev/urandom | base64 | tr -d '\n')"
TICKET_SECRET="whsec_$(head -c 24 /dev/urandom | base64 | tr -d '\n')"
ADMIN=bench-admin-token-0123456789

# config FILE PORT DB RECEIVER_PORT CALLBACK_PORT [EXTRA]
config() {
    cat >"$1" <<EOF
[server]
listen = "127.0.0.1:$2"
admin_token = "$ADMIN"
templates = "$ROOT/config/templates"

[database]
url = "$3"

[channels.web]
[[channels.web.sources]]
name = "bench"
secret = "$SOURCE_SECRET"
callback_url = "http://127.0.0.1:$5/callback"
rate_limit_per_sec = 1000000
rate_limit_burst = 1000000

[[downstream]]
name = "tickets"
url = "http://127.0.0.1:$4/events"
secret = "$TICKET_SECRET"
${6:-}
EOF
}

web_run() {
    local label=$1 db=$2
    local port rport cport
    port=$(free_port); rport=$(free_port); cport=$(free_port)
    config "$WORK/$label.toml" "$port" "$db" "$rport" "$cport"
    start_gateway "$label" "$WORK/$label.toml" "$port"
    log "$label: $CASES web cases, then $CLOSED_SECS s closed loop ($CONCURRENCY workers), then $OPEN_SECS s at $RATE/s"
    "$BENCH" events --label "$label" --url "http://127.0.0.1:$port" --ticket-secret "$TICKET_SECRET" \
        --receiver "127.0.0.1:$rport" --admin-token "$ADMIN" --channel web --source-secret "$SOURCE_SECRET" \
        --callback "127.0.0.1:$cport" --cases "$CASES" --concurrency "$CONCURRENCY" --closed-secs "$CLOSED_SECS" \
        --rate "$RATE" --open-secs "$OPEN_SECS"
    stop "$GW_PID"
}

echo "== lifecycle bench $(date -u +%FT%TZ), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') =="
web_run web-sqlite "sqlite://$WORK/web.db"
if [[ $SKIP_PG != 1 ]]; then
    db="earshot_lbench_$$"
    psql "$PG_URL" -qc "CREATE DATABASE $db" >/dev/null || die "cannot create a PostgreSQL database at $PG_URL"
    PG_DBS+=("$db")
    web_run web-postgres "${PG_URL%/*}/$db"
fi

if [[ $SKIP_EMAIL != 1 ]]; then
    command -v dovecot >/dev/null || die "dovecot is not installed (scripts/test.sh installs it)"
    VENV=target/test-venv
    [[ -x $VENV/bin/python ]] || die "no $VENV (scripts/test.sh makes it)"
    D=$WORK/mail
    mkdir -p "$D"
    chmod 755 "$D"
    imap=$(free_port); smtp=$(free_port)
    start_dovecot "$D" "$imap" || die "dovecot did not start"
    "$VENV/bin/python" -m aiosmtpd -n -l "127.0.0.1:$smtp" -c aiosmtpd.handlers.Mailbox "$D/sink" & PIDS+=($!)
    log "email: appending $EMAIL_CASES complaints to Dovecot"
    python3 - "$imap" "$EMAIL_CASES" <<'PY'
import imaplib, sys, email.utils
from email.message import EmailMessage
port, n = int(sys.argv[1]), int(sys.argv[2])
m = imaplib.IMAP4("127.0.0.1", port)
m.login("tester", "secret123")
for i in range(n):
    msg = EmailMessage()
    msg["From"] = f"Customer {i} <customer{i}@example.net>"
    msg["To"] = "support@example.com"
    msg["Message-ID"] = email.utils.make_msgid(idstring=f"lbench{i}", domain="example.net")
    msg["Date"] = email.utils.formatdate()
    msg["Subject"] = f"Order {i} is late"
    msg.set_content(f"My order {i} has not moved for three days. Please help.")
    m.append("INBOX", None, None, msg.as_bytes())
m.logout()
PY
    port=$(free_port); rport=$(free_port); cport=$(free_port)
    config "$WORK/email.toml" "$port" "sqlite://$WORK/email.db" "$rport" "$cport" "
[[channels.email.mailboxes]]
name = \"support\"
address = \"support@example.com\"
imap = { host = \"127.0.0.1\", port = $imap, security = \"plain\", username = \"tester\", password = \"secret123\", idle = true, poll_secs = 1, batch = 200 }
smtp = { host = \"127.0.0.1\", port = $smtp, security = \"plain\" }"
    # The downstream receiver runs inside the bench; until then case.created waits in the outbox.
    start_gateway email "$WORK/email.toml" "$port"
    log "email: waiting for $EMAIL_CASES acknowledgements at the SMTP sink"
    for _ in $(seq 1200); do
        n=$(ls "$D/sink/new" 2>/dev/null | wc -l)
        [[ $n -ge $EMAIL_CASES ]] && break
        sleep 0.25
    done
    [[ $n -ge $EMAIL_CASES ]] || die "only $n acknowledgements arrived"
    log "email: $EMAIL_SECS s at $RATE/s"
    "$BENCH" events --label email-sqlite --url "http://127.0.0.1:$port" --ticket-secret "$TICKET_SECRET" \
        --receiver "127.0.0.1:$rport" --admin-token "$ADMIN" --channel email --maildir "$D/sink" \
        --closed-secs 0 --rate "$RATE" --open-secs "$EMAIL_SECS"
fi
