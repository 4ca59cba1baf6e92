#!/usr/bin/env bash
# Resume the training run in an output directory from its latest checkpoint (DIR/checkpoint.bin).
#
# Usage: bash scripts/resume.sh [OUT_DIR] [extra train args...]     (default OUT_DIR: out)
# e.g.   bash scripts/resume.sh out --steps 20000 --lr-decay-steps 20000
# Runs `python -m anetrain.train --resume OUT_DIR --out OUT_DIR ...`: the run's saved settings,
# optimizer state and data position are restored; extra flags override the saved settings.
set -euo pipefail

usage() { sed -n '/^#!/d; /^#/!q; s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }  # the header above
case "${1:-}" in -h | --help) usage; exit 0 ;; esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"

die() { echo "resume: error: $*" >&2; exit 2; }

out="out"
if [[ $# -gt 0 && "$1" != -* ]]; then
    out="$1"
    shift
fi
[[ -d "$out" ]] || die "$out: no such output directory (start a run with python -m anetrain.train --out $out)"
[[ -f "$out/checkpoint.bin" ]] || die "$out/checkpoint.bin: no checkpoint to resume (start a run with python -m anetrain.train --out $out)"

"$python" -c "import anetrain.native" 2>/dev/null ||
    die "anetrain is not installed for $python (pip install . in $root, or set PYTHON=...)"
exec "$python" -m anetrain.train --resume "$out" --out "$out" "$@"
