#!/usr/bin/env bash
# Quiver side by side with Vowpal Wabbit, Open Bandit Pipeline, MABWiser and a LiteLLM
# proxy, in one run on this machine. Sets up the peers in isolated venvs under target/,
# installs wrk if missing, builds Quiver in release, then runs compare.py (extra arguments
# go to it, e.g. --sections obp --reps 3). Takes several minutes; not part of CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=benches/compare
venv=target/compare-venv
litellm_venv=target/litellm-venv

if [ ! -f "$venv/.ready" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r "$here/requirements.txt"
    # obp 0.5.7 declares python < 3.11 and pandas < 2; it runs with the pins above.
    "$venv/bin/pip" install -q --no-deps --ignore-requires-python obp==0.5.7
    touch "$venv/.ready"
fi
if [ ! -f "$litellm_venv/.ready" ]; then
    python3 -m venv "$litellm_venv"
    "$litellm_venv/bin/pip" install -q -r "$here/litellm-requirements.txt"
    touch "$litellm_venv/.ready"
fi
if ! command -v wrk > /dev/null; then
    sudo=$([ "$(id -u)" = 0 ] || echo sudo)
    $sudo apt-get update -qq
    $sudo apt-get install -y -q wrk > /dev/null
fi

cargo build --release --bin quiver
# Python reads cargo's messages to the end: a reader that stopped at the match could make
# cargo's last write fail, and the pipeline with it.
quiver_side=$(cargo bench --bench compare --no-run --message-format=json 2> /dev/null \
    | python3 -c 'import json, sys; print([m["executable"] for m in map(json.loads, sys.stdin)
                                           if m.get("executable") and m["target"]["name"] == "compare"][-1])')

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%Y-%m-%d)"
exec "$venv/bin/python" "$here/compare.py" --quiver target/release/quiver --quiver-side "$quiver_side" \
    --litellm "$litellm_venv/bin/litellm" "$@"
