# fetch.sh — shared by the download scripts: fetch URL OUT, with curl, else wget.
#
# Usage: source scripts/fetch.sh   (after defining die(); it is not run on its own)
# fetch URL OUT downloads URL to OUT; when offline it calls die with a clear one-line error,
# and it never leaves a partial OUT.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then  # run rather than sourced: say what it is for
    case "${1:-}" in
        -h | --help) sed -n '/^#/!q; s/^# \{0,1\}//p' "$0"; exit 0 ;;  # the header above
        *) echo "fetch.sh: error: source it from a download script (see --help)" >&2; exit 2 ;;
    esac
fi

fetch() {
    local url="$1" out="$2" err
    if command -v curl >/dev/null 2>&1; then
        err="$(curl -fL --retry 2 --connect-timeout 20 -sS -o "$out" "$url" 2>&1)" || {
            rm -f "$out"
            die "could not download $url (offline or blocked? $(tail -n 1 <<<"$err"))"
        }
    elif command -v wget >/dev/null 2>&1; then
        wget -q --tries=2 --timeout=20 -O "$out" "$url" || {
            rm -f "$out"
            die "could not download $url (offline or blocked?)"
        }
    else
        die "neither curl nor wget is installed"
    fi
}
