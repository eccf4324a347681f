#!/usr/bin/env bash
# The main job on embedded defaults: set everything up, then run stage 7 of the study as a quick
# search: local Ray, a local benchd on 127.0.0.1, MLflow in runs/mlflow.db, the bundled synthetic
# conveyor-belt data. Extra arguments go to the stage script (see `python raysearch/stage7.py --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export NO_ALBUMENTATIONS_UPDATE=1 RAY_USAGE_STATS_ENABLED=0
python raysearch/stage7.py --quick "$@"
echo
echo "Compare the candidates in MLflow:  . .venv/bin/activate && mlflow ui --backend-store-uri sqlite:///runs/mlflow.db --workers 1"
echo "Let the tool pick for a requirement: . .venv/bin/activate && raysearch optimize --quick --max-latency-ms 2 --min-iou 0.5"
