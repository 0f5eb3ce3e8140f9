#!/usr/bin/env bash
# The Telegram channel, measured (issue: Telegram). The bench binary plays Telegram: a local Bot API
# server (the documented wire format) with UPDATES updates from CHATS private chats queued for
# getUpdates, or a client POSTing the same updates to the webhook route.
#
#   bench/telegram.sh                       # from the repository root
#   UPDATES=2000 CHATS=400 bench/telegram.sh
#
# Figures, each on a gateway run as a user runs it (default config and log level, Telegram's limits at
# their defaults: 1 message/s per chat, 30/s in all), with one [[downstream]] endpoint answering 200:
#   polling: updates/s committed (first getUpdates answered -> the offset that confirms the last
#   update), and acknowledgement latency from each case's commit to the sendMessage received;
#   webhook: updates/s committed (each 200 means committed; WORKERS senders, each with its own chats
#   in order), and the same acknowledgement latency.
# One case per chat (the chat's later updates are follow-ups), so CHATS acknowledgements: at 30/s in
# all they take CHATS/30 s, which the latency figures show. Two more lines, labelled: polling with the
# 30/s limit raised (the gateway's own latency; not the default), and the web channel's closed loop
# (WORKERS workers, whole path) in the same run, the baseline of the webhook figure's ratio.
#
# Environment: UPDATES (10000), CHATS (2000), WORKERS (64), DB (sqlite; or a postgres:// URL).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
UPDATES=${UPDATES:-10000}
CHATS=${CHATS:-2000}
WORKERS=${WORKERS:-64}

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_setup telegram
TOKEN="7000000001:AAH-bench_Secret-Part0123456789abcdefgh"
HOOK_SECRET="bench-hook_secret"
ADMIN=bench-admin-token-0123456789
TICKET_SECRET="whsec_$(head -c 24 /dev/urandom | base64 | tr -d '\n')"

# run LABEL MODE [EXTRA TELEGRAM KEYS]
run() {
    local label=$1 mode=$2 extra=${3:-} port bot
    port=$(free_port); bot=$(free_port)
    local db="sqlite://$WORK/$label.db"
    cat >"$WORK/$label.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
admin_token = "$ADMIN"
templates = "$ROOT/config/templates"

[database]
url = "$db"

[[downstream]]
name = "tickets"
url = "http://127.0.0.1:$bot/events"
secret = "$TICKET_SECRET"

[channels.telegram]
token = "$TOKEN"
api_url = "http://127.0.0.1:$bot"
mode = "$mode"
webhook_secret = "$HOOK_SECRET"
$extra
EOF
    # The bench process is also the ticket store: POST /events answers 200.
    "$BENCH" telegram --mode "$mode" --listen "127.0.0.1:$bot" --token "$TOKEN" --url "http://127.0.0.1:$port" \
        --admin-token "$ADMIN" --updates "$UPDATES" --chats "$CHATS" --webhook-secret "$HOOK_SECRET" \
        --concurrency "$WORKERS" --label "$label" >"$WORK/$label.out" 2>"$WORK/$label.err" &
    local bench_pid=$!
    PIDS+=("$bench_pid")
    for _ in $(seq 100); do grep -q ready "$WORK/$label.out" 2>/dev/null && break; sleep 0.1; done
    "$EARSHOT" serve --config "$WORK/$label.toml" >"$WORK/$label.log" 2>&1 & local gw=$!
    PIDS+=("$gw")
    wait "$bench_pid" || { cat "$WORK/$label.err" >&2; tail -n 20 "$WORK/$label.log" >&2; die "$label"; }
    grep "^$label:" "$WORK/$label.out"
    stop "$gw"
}

echo "== telegram bench $(date -u +%FT%TZ), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $UPDATES updates from $CHATS chats =="
run tg-polling polling
run tg-webhook webhook
# A separate line, not the default: Telegram's 30/s global limit raised, to show the gateway's own
# commit -> sendMessage latency.
run tg-polling-limit-raised polling "global_per_sec = 1000000"

# The web channel's closed loop on the same machine in the same run (WORKERS workers, 10 s, whole
# path: delivered to a receiver), the baseline of the webhook figure's ratio.
web_baseline 10 "$WORKERS"
