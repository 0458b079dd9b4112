#!/usr/bin/env bash
# Validates the service's OpenAPI document with openapi-spec-validator, and checks that every
# example in it matches its schema (scripts/validate_openapi.py).
#
#   scripts/validate-openapi.sh                     build, start `demo` on a free port, check it
#   scripts/validate-openapi.sh http://HOST:8088    check a running service
#   scripts/validate-openapi.sh FILE [--samples S]  check a saved document (and real answers)
#
# The Python packages go into a venv under the cargo target directory (created on first use,
# from PyPI). OPENAPI_VENV overrides its place.
set -euo pipefail

VALIDATOR_VERSION=0.9.0
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
venv=${OPENAPI_VENV:-$target/openapi-venv}

ensure_venv() {
    local marker="$venv/.openapi-spec-validator-$VALIDATOR_VERSION"
    [[ -f $marker ]] && return
    mkdir -p "$(dirname "$venv")"
    # Tests and people may start this at once: one installs, the others wait.
    exec 9>"$venv.lock"
    flock 9
    if [[ ! -f $marker ]]; then
        echo "Installing openapi-spec-validator $VALIDATOR_VERSION into $venv" >&2
        python3 -m venv "$venv" >&2
        if ! "$venv/bin/pip" install --quiet --disable-pip-version-check \
            "openapi-spec-validator==$VALIDATOR_VERSION" >&2; then
            echo "error: could not install openapi-spec-validator from PyPI into $venv" >&2
            exit 2
        fi
        touch "$marker"
    fi
    flock -u 9
}

check() {
    "$venv/bin/python" "$root/scripts/validate_openapi.py" "$@"
}

ensure_venv

case "${1:-}" in
http://* | https://*)
    spec=$(mktemp)
    trap 'rm -f "$spec"' EXIT
    url=${1%/}
    [[ $url == */openapi.json ]] || url="$url/openapi.json"
    curl -fsS "$url" -o "$spec"
    shift
    check "$spec" "$@"
    ;;
"")
    work=$(mktemp -d)
    pid=
    cleanup() {
        [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
        rm -rf "$work"
    }
    trap cleanup EXIT
    # A copy, so that another build into a shared target directory cannot swap it underneath.
    (cd "$root" && cargo build --quiet && cp "$target/debug/solar-charging-backend" "$work/service")
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$work/service" demo --port "$port" --demo-data "$work/data" >"$work/log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        curl -fsS "http://127.0.0.1:$port/openapi.json" -o "$work/openapi.json" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || { cat "$work/log" >&2; echo "error: the service exited" >&2; exit 1; }
        sleep 0.2
    done
    [[ -s $work/openapi.json ]] || { cat "$work/log" >&2; echo "error: no /openapi.json" >&2; exit 1; }
    check "$work/openapi.json"
    ;;
*)
    check "$@"
    ;;
esac
