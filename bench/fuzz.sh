#!/usr/bin/env bash
# Fuzzes the parsers with libFuzzer through cargo-fuzz, each target for SECS seconds, starting from
# the real mail in ../shared/corpus/email/ and the tests' fixtures.
#
#   bench/fuzz.sh                        # every target, 600 s each
#   SECS=60 TARGETS="mime case_ref" bench/fuzz.sh
#
# The toolchain is stable (1.95) and cannot change. cargo-fuzz runs on it with `--sanitizer none`:
# the coverage instrumentation libFuzzer needs (`-Cpasses=sancov-module` and its `-Cllvm-args`) is
# stable rustc; only the sanitizers (`-Zsanitizer=address`) need nightly. So these runs find panics,
# failed assertions, integer overflows (`-C overflow-checks=on` in RUSTFLAGS, which cargo-fuzz adds
# to its own), aborts, timeouts and memory blow-ups, but not the memory errors a sanitizer would
# (the crates fuzzed have no `unsafe`). Debug assertions stay off, as in the release binary: with
# them on (`-a`), mail-parser stops at one of its own `debug_assert!`s within seconds (libFuzzer
# aborts on any panic, before `normalize` can catch it); the regression test in
# channels/email/src/parse.rs covers that with the inputs it found.
# Targets: fuzz/fuzz_targets/*.rs (not part of the workspace or of the test command). A crash is
# kept in fuzz/artifacts/<target>/ and printed; turn each into a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-600}
TARGETS=${TARGETS:-"mime classify web_payload webhooks case_ref"}
say() { echo "[fuzz] $*" >&2; }

command -v cargo-fuzz >/dev/null || { say "installing cargo-fuzz"; cargo install cargo-fuzz --locked; }

CORPUS=fuzz/corpus
mkdir -p "$CORPUS"
seed() {
    local t=$1
    mkdir -p "$CORPUS/$t"
    case $t in
        mime | classify)
            if [ -d ../shared/corpus/email ]; then
                find ../shared/corpus/email -type f \( -name '*.eml' -o -name '*.msg' -o -name '*.txt' \) -size -512k \
                    -exec cp -n {} "$CORPUS/$t/" \; 2>/dev/null || true
            else
                say "SKIPPED seeding $t from ../shared/corpus/email (not beside this clone)"
            fi
            ;;
        web_payload)
            printf '%s' '{"customer":{"email":"li@example.com","language":"zh"},"text":"杯子碎了","attachments":[{"name":"a.jpg","media_type":"image/jpeg","size":3}],"metadata":{"k":1}}' >"$CORPUS/$t/zh.json"
            printf '%s' '{"customer":{"phone":"+8613800000000","user_id":"u1"},"subject":"Late","text":"My order is late","order_id":"SO-1"}' >"$CORPUS/$t/phone.json"
            ;;
        webhooks)
            printf 'msg_1\xff1800000000\xffv1,abc\xff{"a":1}' >"$CORPUS/$t/basic"
            printf 'msg_2\xff-9223372036854775808\xffv1,x v1,y\xff' >"$CORPUS/$t/min"
            ;;
        case_ref)
            printf '4827-1936-5' >"$CORPUS/$t/ref"
            printf '案件编号 4827 1936 5' >"$CORPUS/$t/spoken"
            ;;
    esac
}

SUMMARY=()
for t in $TARGETS; do
    seed "$t"
    say "$t: ${SECS}s from $(ls "$CORPUS/$t" | wc -l) seed(s)"
    log=$(mktemp)
    set +e
    RUSTFLAGS="-C overflow-checks=on" cargo fuzz run --sanitizer none -O --target-dir target/fuzz "$t" "$CORPUS/$t" -- \
        -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1)
    crashes=$(ls "fuzz/artifacts/$t" 2>/dev/null | wc -l)
    line="$t: exit=$rc executions=${execs:-?} ${cov:-} corpus=$(ls "$CORPUS/$t" | wc -l) artifacts=$crashes"
    SUMMARY+=("$line")
    say "$line"
    if [ "$rc" != 0 ]; then tail -n 40 "$log" >&2; fi
    rm -f "$log"
done
echo "== fuzz summary ($(date -u +%FT%TZ), ${SECS}s per target) =="
printf '%s\n' "${SUMMARY[@]}"
