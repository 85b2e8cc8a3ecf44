#!/usr/bin/env bash
# Fashion-MNIST's four official gzipped IDX files, from the Debian package dataset-fashion-mnist
# (installed under /usr/share/datasets/fashion-mnist, where cnnumpy looks for them).
set -euo pipefail
bash "$(dirname "$0")/apt-install.sh" \
    "put the four Fashion-MNIST .gz files in ~/.cache/cnnumpy/fashion-mnist" dataset-fashion-mnist
