# fetch.sh — shared by the download scripts (source it after defining die()).
# fetch URL OUT: curl, else wget; a clear one-line error (via die) when offline; no partial file.
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
