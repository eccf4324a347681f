#!/usr/bin/env bash
# The main job on embedded defaults: set everything up, then search stage 7 of the study with the
# default method (latency-first, every trial to the end): local Ray, a local benchd on 127.0.0.1, MLflow in
# runs/mlflow.db, the bundled synthetic conveyor-belt data. It ends with the front and what the
# search saved against the grid. Extra arguments go to the stage script (`--mode grid`: the study's
# whole grid; see `python raysearch/stage7.py --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export NO_ALBUMENTATIONS_UPDATE=1 RAY_USAGE_STATS_ENABLED=0
python raysearch/stage7.py --quick --mode search --num-samples 6 "$@"
echo
echo "Compare the candidates in MLflow:  . .venv/bin/activate && mlflow ui --backend-store-uri sqlite:///runs/mlflow.db --workers 1"
echo "Every trial, interactive:          . .venv/bin/activate && raysearch report   (then open raysearch-report-front.html)"
echo "The whole grid, to compare with:   bash scripts/quickstart.sh --mode grid"
echo "Let the tool pick for a requirement: . .venv/bin/activate && raysearch optimize --quick --max-latency-ms 2 --min-iou 0.5"
