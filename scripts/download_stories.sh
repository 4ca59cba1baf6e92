#!/usr/bin/env bash
# Download llama2.c's released stories models (karpathy/tinyllamas) and tokenizer.bin to data/models/.
#
# Usage: bash scripts/download_stories.sh [15M] [42M] [110M] [all]   (default: 15M)
# Every file is checked (size, sha256 for tokenizer.bin, v0 header vs file size for the models)
# and only then moved into place; files already present and valid are kept.
set -euo pipefail

usage() { sed -n '/^#!/d; /^#/!q; s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }  # the header above
for arg in "$@"; do case "$arg" in -h | --help) usage; exit 0 ;; esac; done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${ANETRAIN_MODELS_DIR:-$root/data/models}"
python="${PYTHON:-python3}"
models_url="https://huggingface.co/karpathy/tinyllamas/resolve/main"
tokenizer_url="https://raw.githubusercontent.com/karpathy/llama2.c/master/tokenizer.bin"
tokenizer_size=433869
tokenizer_sha256="50a52ef822ee9e83de5ce9d0be0a025a773d019437f58b5ff9dcafb063ece361"

die() { echo "download_stories: error: $*" >&2; exit 1; }

# Known sizes (llama2.md §2.1): 15M is measured; 42M/110M follow from their v0 headers.
expected_size() {
    case "$1" in
        stories15M.bin) echo 60816028 ;;
        stories42M.bin) echo 167020572 ;;
        stories110M.bin) echo 438381596 ;;
        *) echo "" ;;
    esac
}

# shellcheck source=scripts/fetch.sh
source "$(dirname "${BASH_SOURCE[0]}")/fetch.sh"

file_size() { wc -c <"$1" | tr -d ' '; }
sha256() {  # GNU coreutils' sha256sum, or shasum (every macOS)
    if command -v sha256sum >/dev/null; then sha256sum "$1"; else shasum -a 256 "$1"; fi | cut -d ' ' -f 1
}

check_tokenizer() {  # check_tokenizer FILE -> 0 if it is llama2.c's tokenizer.bin
    [[ -f "$1" ]] || return 1
    [[ "$(file_size "$1")" == "$tokenizer_size" ]] || return 1
    [[ "$(sha256 "$1")" == "$tokenizer_sha256" ]]
}

check_model() {  # check_model FILE NAME -> 0 if the size matches the table and its v0 header
    local file="$1" want
    [[ -f "$file" ]] || return 1
    want="$(expected_size "$2")"
    [[ -z "$want" || "$(file_size "$file")" == "$want" ]] || return 1
    # the package's own v0 reader checks the header against the file size (no build needed)
    PYTHONPATH="$root/python${PYTHONPATH:+:$PYTHONPATH}" "$python" - "$file" <<'PY'
import sys
from anetrain.formats.llama2c import read_header
from anetrain.errors import UserError
try:
    version = read_header(sys.argv[1])[0]
except UserError:
    sys.exit(1)
sys.exit(0 if version == 0 else 1)  # the released models are llama2.c v0 files
PY
}

get() {  # get URL NAME CHECK...: download to a temp file, check, move into place
    local url="$1" name="$2"
    shift 2
    local out="$dest/$name"
    if "$@" "$out" "$name"; then
        echo "$out: present and valid"
        return
    fi
    echo "downloading $url"
    fetch "$url" "$out.tmp"
    "$@" "$out.tmp" "$name" || { rm -f "$out.tmp"; die "$url: downloaded file failed its checks"; }
    mv "$out.tmp" "$out"
    echo "$out: $(file_size "$out") bytes, ok"
}

main() {
    local sizes=("$@") s
    [[ ${#sizes[@]} -gt 0 ]] || sizes=(15M)
    [[ "${sizes[*]}" != "all" ]] || sizes=(15M 42M 110M)
    for s in "${sizes[@]}"; do
        case "$s" in 15M | 42M | 110M) ;; *) die "unknown model '$s' (choose 15M, 42M, 110M or all)" ;; esac
    done
    mkdir -p "$dest"
    get "$tokenizer_url" tokenizer.bin check_tokenizer
    for s in "${sizes[@]}"; do
        get "$models_url/stories$s.bin" "stories$s.bin" check_model
    done
}

main "$@"
