#!/usr/bin/env bash
# Regenerate the embedded dataset data/stories/ exactly (make_stories.py -> prepare_data.py).
#
# Usage: bash scripts/build_embedded_data.sh [out_dir]   (default: data/stories)
# Deterministic: the same inputs give byte-identical train.bin, val.bin, tokenizer.bin,
# tokenizer.model and meta.json (seeded generator, single-threaded unshuffled sentencepiece).
set -euo pipefail

usage() { sed -n '/^#!/d; /^#/!q; s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }  # the header above
case "${1:-}" in -h | --help) usage; exit 0 ;; esac

N_STORIES=9000
STORY_SEED=1337
VOCAB_SIZE=2048
SPLIT_SEED=42
VAL_FRACTION=0.02

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/data/stories}"
python="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"$python" "$root/scripts/make_stories.py" --n-stories "$N_STORIES" --seed "$STORY_SEED" \
    -o "$tmp/stories.txt"
"$python" "$root/scripts/prepare_data.py" "$tmp/stories.txt" -o "$out" \
    --vocab-size "$VOCAB_SIZE" --val-fraction "$VAL_FRACTION" --seed "$SPLIT_SEED" \
    --source "make_stories.py --n-stories $N_STORIES --seed $STORY_SEED"
total=$(cat "$out"/* | wc -c | tr -d ' ')  # portable (macOS du has no -b)
echo "$out: $total bytes in total" >&2
