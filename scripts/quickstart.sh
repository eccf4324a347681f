#!/usr/bin/env bash
# The main job on embedded defaults: set everything up, then train a small Fast-SCNN on the
# bundled synthetic conveyor-belt data, export it to ONNX and measure its test IoU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export NO_ALBUMENTATIONS_UPDATE=1 RAY_USAGE_STATS_ENABLED=0
raysearch train --data synthetic:200 --a 0.125 --t 2 --r 1 --pp 0 --res 128 --epochs 15 --out runs/quickstart "$@"
raysearch summary --a 0.125 --t 2 --r 1 --pp 0 --res 128
