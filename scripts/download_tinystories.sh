#!/usr/bin/env bash
# Download the Llama-2-tokenized TinyStories shards (HF dataset enio/TinyStories) to data/tinystories/.
#
# Usage: bash scripts/download_tinystories.sh [--all]
# The archive holds every shard (it is large; it is kept in the same directory for re-runs).
# Default: only the first shard, data00.bin (~41 MB, ~20M tokens; upstream.md §5.9). --all keeps
# every .bin of the archive. Each shard is checked: non-empty, even byte count (raw little-endian
# uint16, no header) and every token id < 32000 (the Llama 2 vocabulary).
set -euo pipefail

usage() { sed -n '/^#!/d; /^#/!q; s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }  # the header above
case "${1:-}" in -h | --help) usage; exit 0 ;; esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${ANETRAIN_TINYSTORIES_DIR:-$root/data/tinystories}"
python="${PYTHON:-python3}"
url="https://huggingface.co/datasets/enio/TinyStories/resolve/main/tok32000/TinyStories_tok32000.tar.gz"
archive="$dest/TinyStories_tok32000.tar.gz"
vocab=32000

die() { echo "download_tinystories: error: $*" >&2; exit 1; }

# shellcheck source=scripts/fetch.sh
source "$(dirname "${BASH_SOURCE[0]}")/fetch.sh"

check_shard() {  # check_shard FILE: uint16 tokens, even size, all ids < vocab
    # the package's own token-file check (no build needed)
    PYTHONPATH="$root/python${PYTHONPATH:+:$PYTHONPATH}" "$python" - "$1" "$vocab" <<'PY' ||
import sys
from anetrain.formats.data import load_tokens
from anetrain.errors import UserError
path, vocab = sys.argv[1], int(sys.argv[2])
try:
    tokens = load_tokens(path, vocab)
except UserError as e:
    sys.exit(str(e))
print(f"{path}: {2 * tokens.size:,} bytes, {tokens.size:,} tokens, max id {int(tokens.max())}, "
      f"{int((tokens == 1).sum()):,} stories")
PY
        die "$1: not a valid uint16 token shard"
}

main() {
    local all=0
    case "${1:-}" in
        "") ;;
        --all) all=1 ;;
        *) die "unknown argument '$1' (usage: download_tinystories.sh [--all])" ;;
    esac
    mkdir -p "$dest"
    if [[ ! -f "$archive" ]]; then
        echo "downloading $url"
        fetch "$url" "$archive.tmp"
        mv "$archive.tmp" "$archive"
    fi
    local members
    members="$(tar -tzf "$archive" 2>/dev/null)" || die "$archive: corrupt archive (delete it and retry)"
    local pattern='(^|/)data00\.bin$'
    [[ $all == 0 ]] || pattern='\.bin$'
    local wanted
    wanted="$(grep -E "$pattern" <<<"$members" || true)"
    [[ -n "$wanted" ]] || die "$archive: no member matching $pattern"
    local m
    while IFS= read -r m; do
        tar -xzf "$archive" -C "$dest" "$m"
        if [[ "$m" != "$(basename "$m")" ]]; then
            mv "$dest/$m" "$dest/$(basename "$m")"
            rmdir -p "$dest/$(dirname "$m")" 2>/dev/null || true
        fi
        check_shard "$dest/$(basename "$m")"
    done <<<"$wanted"
    echo "done: shards in $dest (train with --data $dest/data00.bin)"
}

main "$@"
