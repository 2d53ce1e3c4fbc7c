#!/usr/bin/env bash
# Drives the real explorer in tmux (called by tests/test_tui_e2e.c): start on the sample, move between
# heads, change a pattern and see the numbers change, export a PNG, resize (also below the minimum),
# quit with q and with Ctrl-C (also while the prefill runs: it is cancelled, the exit is prompt and
# normal), and check the terminal is restored. Usage: tui_e2e.sh BIN OUTDIR.
# Exit 0 = pass, 77 = skip (no tmux), anything else = fail with the reason on stderr.
set -u
bin=$(realpath "$1"); out=$(realpath "$2")
command -v tmux >/dev/null || { echo "tmux not installed" >&2; exit 77; }
cd "$(dirname "$0")/.."
model=
for d in samples/models/*/; do [ -f "$d/config.json" ] && { model=${d%/}; break; }; done
[ -n "$model" ] || model=tests/fixtures/tiny-llama
prompt=samples/prompts/haystack.txt
[ -f "$prompt" ] || { head -c 3000 /dev/urandom | base64 > "$out/prompt.txt"; prompt=$out/prompt.txt; }
run=0
sock="attnscope-e2e-$$-0"
T() { tmux -L "$sock" -f /dev/null "$@"; }
term=tmux-256color
infocmp "$term" >/dev/null 2>&1 || term=xterm-256color
cap() { T capture-pane -p -t e2e; }
fail() { echo "FAIL: $*" >&2; echo "--- screen ---" >&2; cap >&2; T kill-server 2>/dev/null; exit 1; }
# wait_for REGEX SECONDS: poll the screen until it matches
wait_for() {
    local i=0
    while [ $i -lt $(($2 * 10)) ]; do cap | grep -qE -- "$1" && return 0; sleep 0.1; i=$((i + 1)); done
    return 1
}
start() { # start ARGS...: the explorer in a fresh 100x32 tmux window; records exit code and stty
    rm -f "$out/exit" "$out/stty" "$out/stderr"
    T kill-server 2>/dev/null
    run=$((run + 1))
    sock="attnscope-e2e-$$-$run" # a fresh server: the old one may still be shutting down
    T new-session -d -s e2e -x 100 -y 32 -c "$PWD" \
        "env TERM=$term LANG=C.UTF-8 LC_ALL=C.UTF-8 $bin tui $* --out-dir $out 2> $out/stderr; echo \$? > $out/exit; stty -a > $out/stty; sleep 60"
}
finished() { # [SECONDS]: wait for the exit code (30 s by default), check it and the restored terminal
    local i=0
    while [ ! -s "$out/stty" ] && [ $i -lt $((${1:-30} * 10)) ]; do sleep 0.1; i=$((i + 1)); done
    [ -s "$out/exit" ] || fail "the explorer did not exit within ${1:-30} s"
    [ "$(cat "$out/exit")" = 0 ] || fail "exit status $(cat "$out/exit")"
    grep -qE '(^| )icanon( |$)' "$out/stty" && grep -qE '(^| )echo( |$)' "$out/stty" || fail "terminal left in raw mode: $(cat "$out/stty")"
    [ "$(T display -p -t e2e '#{alternate_on}')" = 0 ] || fail "alternate screen still on"
}

start --model "$model" --prompt "$prompt" --max-tokens 1024
wait_for 'ready, prefill' 120 || fail "never became ready"
cap | grep -q 'Heads density' || fail "no overview panel"
cap | grep -q 'Pattern L0 H0' || fail "pattern panel not on L0 H0"
# move between heads (overview has focus at start)
T send-keys -t e2e Right Down
wait_for 'Pattern L1 H1' 10 || fail "Right/Down did not select L1 H1"
T send-keys -t e2e k
wait_for 'Pattern L0 H1' 10 || fail "k did not select L0 H1"
# change the pattern: focus the pattern panel, cycle the kind; the head's numbers must change
before=$(cap | grep -oE 'dens [0-9.]+ rec [0-9.]+ err [0-9.e+-]+' | head -1)
[ -n "$before" ] || fail "no head numbers"
T send-keys -t e2e Tab Tab
wait_for '> pattern' 5 || fail "Tab Tab did not focus the pattern panel"
T send-keys -t e2e Right
wait_for 'pattern +bs' 10 || fail "the pattern did not cycle to bs"
i=0
while [ $i -lt 300 ]; do
    now=$(cap | grep -oE 'dens [0-9.]+ rec [0-9.]+ err [0-9.e+-]+' | head -1)
    [ -n "$now" ] && [ "$now" != "$before" ] && break
    sleep 0.1; i=$((i + 1))
done
[ "$now" != "$before" ] || fail "numbers did not change after the pattern change ($before)"
echo "numbers: $before -> $now" >&2
# end to end
T send-keys -t e2e r
wait_for 'top-1 [0-9.]+%' 120 || fail "no end-to-end numbers after r"
# export a PNG: the footer names the path
T send-keys -t e2e e
wait_for 'exported PNG: ' 60 || fail "no export message"
cap | grep -oE 'exported PNG: [^ ]+\.png' | head -1 | sed 's/exported PNG: //' > "$out/png_path"
# help overlay, then any key closes it
T send-keys -t e2e '?'
wait_for 'Keys \(any key closes' 5 || fail "no help overlay"
T send-keys -t e2e x
sleep 0.3
cap | grep -q 'Keys (any key closes' && fail "help did not close"
# teach view for a vertical-slash head (L0 H0 uses the default vs pattern)
T send-keys -t e2e Tab h t
wait_for 'Teach L0 H0' 10 || fail "no teach view"
T send-keys -t e2e Right Right Right Right
wait_for 'row blocks: [0-9]+ key blocks' 20 || fail "teach view did not reach the index step"
T send-keys -t e2e Escape
wait_for 'Heatmap L0 H0' 5 || fail "Esc did not leave the teach view"
# jump to a token
T send-keys -t e2e / 5 0 0 , 4 0 Enter
wait_for 'q 500 .* k 40 ' 10 || fail "jump to 500,40 failed"
# resize: minimum, below it (message, no drawing), and back
T resize-window -t e2e -x 80 -y 24
wait_for 'Heads density' 5 || fail "not drawn at 80x24"
T resize-window -t e2e -x 60 -y 20
wait_for 'at least 80x24' 5 || fail "no too-small message at 60x20"
T resize-window -t e2e -x 120 -y 40
wait_for 'Heads density' 5 || fail "not redrawn after growing"
T send-keys -t e2e q
finished

# q and Ctrl-C quit cleanly while the prefill runs (the full-length prompt keeps it busy for seconds):
# the prefill is cancelled before its next layer, so the exit is prompt, with status 0 and no crash
for key in q C-c; do
    start --model "$model" --prompt "$prompt" --no-color
    wait_for 'prefill.* [0-9]+/[0-9]+' 20 || fail "no prefill progress in the header"
    T send-keys -t e2e "$key"
    finished 10
    grep -qiE 'error|abort|sanitizer' "$out/stderr" && fail "$key during the prefill: $(cat "$out/stderr")"
done
# and q after the analysis, in monochrome
start --model tests/fixtures/tiny-llama --prompt "$prompt" --no-color --max-tokens 512
wait_for 'ready, prefill' 60 || fail "tiny model never became ready"
T send-keys -t e2e q
finished
T kill-server 2>/dev/null
echo "tui e2e: all steps passed" >&2
exit 0
