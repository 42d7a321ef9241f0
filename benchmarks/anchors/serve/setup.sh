#!/usr/bin/env bash
# Builds what benchmarks/serve_bench.py needs beyond the project's .venv:
#   wrk                 the load generator (Debian package)
#   .bench/bentoml/     BentoML 1.4.40, anchor (d)
#   .bench/mlserver/    MLServer 1.7.1 + mlserver-sklearn, anchor (e)
# Each venv is installed from its pinned requirement file beside this script and stamped with
# .installed; a venv whose stamp is newer than its requirement file is left as it is.
#
# Usage (from the repository root): benchmarks/anchors/serve/setup.sh [wrk|bentoml|mlserver]...
# (no argument: all three). PYTHON picks the interpreter for the venvs (default: python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
python="${PYTHON:-python3}"

install_wrk() {
    if command -v wrk >/dev/null 2>&1; then
        return
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "wrk is missing: run 'sudo apt-get install -y wrk'" >&2
        exit 1
    fi
    apt-get update -qq
    apt-get install -y -qq wrk
}

install_venv() {
    local name="$1"
    local venv="$root/.bench/$name"
    local reqs="$here/$name-requirements.txt"
    if [ -f "$venv/.installed" ] && [ "$venv/.installed" -nt "$reqs" ]; then
        echo "$venv: up to date"
        return
    fi
    echo "building $venv from $(basename "$reqs")"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade "pip==26.3"
    # --no-deps: the file is a complete pip freeze, so nothing else may come in
    "$venv/bin/python" -m pip install --quiet --no-deps -r "$reqs"
    "$venv/bin/python" -m pip check
    touch "$venv/.installed"
}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(wrk bentoml mlserver)
fi
for target in "${targets[@]}"; do
    case "$target" in
        wrk) install_wrk ;;
        bentoml | mlserver) install_venv "$target" ;;
        *)
            echo "unknown target '$target': use wrk, bentoml or mlserver" >&2
            exit 2
            ;;
    esac
done
