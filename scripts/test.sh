#!/usr/bin/env bash
# Set everything up, then run the test suite. Extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/system_deps.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export NO_ALBUMENTATIONS_UPDATE=1 RAY_USAGE_STATS_ENABLED=0
python -m pytest "$@"
