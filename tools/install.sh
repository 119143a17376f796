#!/usr/bin/env bash
# Installs vitbench on a Debian machine: the Fashion-MNIST data (Debian package) and the project with its test
# extra into a project virtual environment, .venv (so a stock Debian's "externally managed" Python is never
# touched). Safe to run again: it skips what is already there. Then use .venv/bin/python.
#
#   VITBENCH_PYTHON  the Python that creates the environment (default: python3 on the PATH)
#   VITBENCH_VENV    where the environment goes (default: .venv in the project)
#   VITBENCH_EXTRAS  extras to install (default: test; e.g. test,ray)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${VITBENCH_PYTHON:-python3}
venv=${VITBENCH_VENV:-.venv}
extras=${VITBENCH_EXTRAS:-test}

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_install() {
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

if [ -z "${VITBENCH_DATA:-}" ] && [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    apt_install dataset-fashion-mnist
fi

if [ ! -x "$venv/bin/python" ]; then
    if ! "$python" -m venv "$venv" >/dev/null 2>&1; then  # Debian's Python needs python3-venv for this
        rm -rf "$venv"
        apt_install python3-venv
        "$python" -m venv "$venv"
    fi
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
echo "vitbench installed in $venv: run it with $venv/bin/python -m bench ..."
