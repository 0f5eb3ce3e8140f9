#!/usr/bin/env bash
# The phone channel, measured (issue: phone). The bench binary plays the provider: it signs its
# callbacks (X-Twilio-Signature), answers its Messages API (201) and is the ticket store (200).
#
#   bench/phone.sh                          # from the repository root
#
# Figures, on a gateway run as a user runs it (default config and log level, SQLite, one downstream):
#   TwiML answer time of the incoming-call callback, open loop at RATE calls/s for SECS s;
#   signed SMS callbacks committed per second, closed loop with WORKERS senders for SECS s (each SMS
#   from its own number: a new case and an SMS acknowledgement), and the time until every case
#   reached the ticket store and every acknowledgement the Messages API;
#   the web channel's closed loop in the same run (WORKERS workers, whole path): the ratio's baseline.
#
# Environment: RATE (200), SECS (20), WORKERS (64).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RATE=${RATE:-200}
SECS=${SECS:-20}
WORKERS=${WORKERS:-64}

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_setup phone
TOKEN="bench-phone-auth-token-0123456789"
PUBLIC="https://hotline.example.com"
TICKET_SECRET="whsec_$(head -c 24 /dev/urandom | base64 | tr -d '\n')"

# gateway LABEL -> sets PORT, PROVIDER, GW_PID
gateway() {
    local label=$1
    PORT=$(free_port); PROVIDER=$(free_port)
    cat >"$WORK/$label.toml" <<EOF
[server]
listen = "127.0.0.1:$PORT"

[database]
url = "sqlite://$WORK/$label.db"

[[downstream]]
name = "tickets"
url = "http://127.0.0.1:$PROVIDER/events"
secret = "$TICKET_SECRET"

[channels.phone]
auth_token = "$TOKEN"
account_sid = "AC0123456789abcdef0123456789abcdef"
from_number = "+8610085000000"
api_url = "http://127.0.0.1:$PROVIDER"
public_url = "$PUBLIC"
EOF
    start_gateway "$label" "$WORK/$label.toml" "$PORT"
}

echo "== phone bench $(date -u +%FT%TZ), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') =="
gateway voice
"$BENCH" phone --figure voice --url "http://127.0.0.1:$PORT" --public-url "$PUBLIC" --token "$TOKEN" \
    --listen "127.0.0.1:$PROVIDER" --rate "$RATE" --duration "$SECS" --label phone-voice | grep '^phone-voice:'
stop "$GW_PID"

gateway sms
"$BENCH" phone --figure sms --url "http://127.0.0.1:$PORT" --public-url "$PUBLIC" --token "$TOKEN" \
    --listen "127.0.0.1:$PROVIDER" --concurrency "$WORKERS" --duration "$SECS" --label phone-sms | grep '^phone-sms:'
stop "$GW_PID"

web_baseline "$SECS" "$WORKERS"
