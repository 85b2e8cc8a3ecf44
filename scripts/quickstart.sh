#!/usr/bin/env bash
# The main job on a fresh machine: Fashion-MNIST (Debian package), a virtual environment with
# cnnumpy and its extras, then `cnnumpy train` with the default recipe into runs/fmnist.
# Extra arguments go to `cnnumpy train` (e.g. --epochs 1 --limit 5000 for a quick try).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-data.sh
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet -e ".[progress,image,plot,threads]"
exec .venv/bin/cnnumpy train --out runs/fmnist "$@"
