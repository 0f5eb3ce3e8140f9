#!/usr/bin/env bash
# Email benchmarks: parse throughput of the corpus, IMAP ingest of a 2,000-message backlog, and one
# 25 MB message with attachments. Real Dovecot and a real SMTP sink on 127.0.0.1, all state in a
# temporary folder that is removed at the end.
#
#   bench/email.sh                 (env: MESSAGES=2000, BIG_MB=25, PARSE_SECS=10)
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-2000}
BIG_MB=${BIG_MB:-25}
PARSE_SECS=${PARSE_SECS:-10}
# BACKLOG=200 adds the hardening figure: peak RSS while a backlog of that many BIG_MB messages is
# ingested (IMAP fetches are grouped by RFC822.SIZE, at most 64 MiB at once). ONLY_BACKLOG=1 runs
# that part alone.
BACKLOG=${BACKLOG:-0}
ONLY_BACKLOG=${ONLY_BACKLOG:-0}
say() { echo "[email-bench] $*" >&2; }

command -v dovecot >/dev/null || { say "installing dovecot-imapd"; apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd >/dev/null; }
VENV=target/test-venv
[ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import aiosmtpd' 2>/dev/null || { say "making $VENV with aiosmtpd"; python3 -m venv "$VENV"; "$VENV/bin/pip" install -q aiosmtpd; }

cargo_build() { if [ -e /tmp/earshot-cargo.lock ]; then flock /tmp/earshot-cargo.lock cargo "$@"; else cargo "$@"; fi; }
say "building release binaries"
cargo_build build --release -q -p earshot -p earshot-bench
BIN=target/release/earshot

D=$(mktemp -d /tmp/earshot-email-bench.XXXXXX)
# Dovecot's auth and mail processes run as other users: they must be able to enter the folder.
chmod 755 "$D"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

if [ "$ONLY_BACKLOG" != 1 ]; then
echo "== parse throughput (${PARSE_SECS}s over ../shared/corpus/email) =="
PARSE=$(target/release/parse-corpus --dir ../shared/corpus/email --seconds "$PARSE_SECS")
echo "$PARSE"
fi

# shellcheck source=bench/mailservers.sh
source bench/mailservers.sh

# Appends N generated complaints (or one big message) with Python's imaplib: a real IMAP APPEND.
append_messages() {
    python3 - "$@" <<'PY'
import imaplib, sys, time, email.utils, os
from email.message import EmailMessage
port, kind, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
m = imaplib.IMAP4("127.0.0.1", port)
m.login("tester", "secret123")
t = time.time()
for i in range(n):
    msg = EmailMessage()
    msg["From"] = f"Customer {i} <customer{i}@example.net>"
    msg["To"] = "support@example.com"
    msg["Message-ID"] = email.utils.make_msgid(idstring=f"bench{i}", domain="example.net")
    msg["Date"] = email.utils.formatdate()
    if kind == "big":
        msg["Subject"] = "Photos and invoices of the broken delivery"
        msg.set_content("The parcel arrived crushed; photos and invoices attached.")
        size = int(sys.argv[4]) * 1024 * 1024
        for j, part in enumerate((size // 2, size // 4, size - size // 2 - size // 4)):
            msg.add_attachment(os.urandom(part * 3 // 4), maintype="application", subtype="octet-stream", filename=f"evidence-{j}.bin")
    elif i % 10 < 3:
        msg["Subject"] = f"订单 {i} 延误"
        msg.set_content(f"我的订单 {i} 已经三天没有更新物流了，请尽快处理。", charset="gb18030")
    else:
        msg["Subject"] = f"Order {i} is late"
        msg.set_content(f"My order {i} has not moved for three days. Please help.")
    m.append("INBOX", None, None, msg.as_bytes())
m.logout()
print(f"appended {n} message(s) in {time.time() - t:.1f}s", file=sys.stderr)
PY
}

start_sink() {
    local port=$1
    "$VENV/bin/python" -m aiosmtpd -n -l "127.0.0.1:$port" -c aiosmtpd.handlers.Mailbox "$D/sink-$port" & PIDS+=($!)
    sleep 0.5
}

write_config() {
    local dir=$1 imap=$2 smtp=$3 http=$4
    cat > "$dir/earshot.toml" <<CONF
[server]
listen = "127.0.0.1:$http"
admin_token = "bench-admin-token-0123456789"
[database]
url = "sqlite://$dir/earshot.db"
[channels.email]
max_attachment_bytes = 10485760
[[channels.email.mailboxes]]
name = "support"
address = "support@example.com"
imap = { host = "127.0.0.1", port = $imap, security = "plain", username = "tester", password = "secret123", idle = true, poll_secs = 1, batch = 200 }
smtp = { host = "127.0.0.1", port = $smtp, security = "plain" }
CONF
}

# Runs the gateway until the store has $2 cases; prints seconds from start and the peak RSS.
ingest() {
    local dir=$1 want=$2
    RUST_LOG=warn "$BIN" serve --config "$dir/earshot.toml" 2>"$dir/gateway.log" & local pid=$!; PIDS+=($pid)
    local t0 t1 n=0 peak=0 rss
    t0=$(date +%s.%N)
    for _ in $(seq 6000); do
        rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0); [ "${rss:-0}" -gt "$peak" ] && peak=$rss
        n=$(sqlite3 "$dir/earshot.db" 'SELECT COUNT(*) FROM cases' 2>/dev/null || echo 0)
        [ "${n:-0}" -ge "$want" ] && break
        sleep 0.05
    done
    t1=$(date +%s.%N)
    sleep 1
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0); [ "${rss:-0}" -gt "$peak" ] && peak=$rss
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "cases=$n secs=$(echo "$t1 - $t0" | bc) peak_rss_mib=$((peak / 1024))"
}

if [ "$ONLY_BACKLOG" != 1 ]; then
echo "== IMAP ingest: $MESSAGES messages appended before start =="
mkdir -p "$D/a"; IMAP=$(free_port); SMTP=$(free_port); HTTP=$(free_port)
start_dovecot "$D/a/dovecot" "$IMAP"; start_sink "$SMTP"
append_messages "$IMAP" normal "$MESSAGES"
write_config "$D/a" "$IMAP" "$SMTP" "$HTTP"
INGEST=$(ingest "$D/a" "$MESSAGES")
SECS=$(echo "$INGEST" | sed -E 's/.*secs=([0-9.]+).*/\1/')
echo "ingest: $INGEST rate=$(echo "scale=0; $MESSAGES / $SECS" | bc) msg/s"

echo "== one ${BIG_MB} MB message with attachments =="
mkdir -p "$D/b"; IMAP=$(free_port); HTTP=$(free_port)
start_dovecot "$D/b/dovecot" "$IMAP"
append_messages "$IMAP" big 1 "$BIG_MB"
write_config "$D/b" "$IMAP" "$SMTP" "$HTTP"
BIG=$(ingest "$D/b" 1)
echo "big: $BIG"
sqlite3 "$D/b/earshot.db" "SELECT name, size, truncated, LENGTH(content) FROM attachments" | sed 's/^/big attachment: /'

fi

if [ "$BACKLOG" -gt 0 ]; then
    echo "== a backlog of $BACKLOG messages of ${BIG_MB} MB, appended before start =="
    mkdir -p "$D/c"; IMAP=$(free_port); SMTP=$(free_port); HTTP=$(free_port)
    start_dovecot "$D/c/dovecot" "$IMAP"; start_sink "$SMTP"
    append_messages "$IMAP" big "$BACKLOG" "$BIG_MB"
    write_config "$D/c" "$IMAP" "$SMTP" "$HTTP"
    BACKLOG_RESULT=$(ingest "$D/c" "$BACKLOG")
    echo "backlog: $BACKLOG_RESULT"
fi
[ "$ONLY_BACKLOG" = 1 ] && exit 0

echo
echo "== summary =="
echo "$PARSE"
echo "IMAP ingest of $MESSAGES: $INGEST"
echo "${BIG_MB} MB message: $BIG"
