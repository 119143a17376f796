#!/usr/bin/env bash
# Installs everything vitbench needs on a Debian machine: the Fashion-MNIST data (Debian package) and the
# project with its test extra (pip). Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VITBENCH_DATA:-}" ] && [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq dataset-fashion-mnist
fi

python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"
