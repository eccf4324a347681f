#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv with everything the search side
# and the tests need. Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned (the version everything is tested with). Where the index is plain PyPI on
# Linux x86_64 this is the multi-GB CUDA build: install the CPU build into .venv first (README,
# Troubleshooting); a torch already there is kept.
python -c "import torch" 2>/dev/null || { echo "setup: installing torch==2.13.0 (from the configured index; see README, Troubleshooting, for a CPU-only machine)"; pip install -q torch==2.13.0; }
echo "setup: installing raysearch + benchd with the [search,test,peers] extras"
# build-backend chatter goes to .venv/setup.log; shown only when the install fails
if ! pip install -q -e ".[search,test,peers]" > .venv/setup.log 2>&1; then
  cat .venv/setup.log >&2
  exit 1
fi
# the peer of `raysearch replay --methods moasha`: Syne Tune's MOASHA, pinned, without the
# dependencies it never imports (xgboost, statsmodels, scikit-learn; see pyproject's [peers])
python -c "import syne_tune" 2>/dev/null || pip install -q --no-deps "syne-tune==0.16.0" >> .venv/setup.log 2>&1 || {
  cat .venv/setup.log >&2; exit 1; }
# matplotlib builds its font cache on first import ("Matplotlib is building the font cache"): here,
# once, rather than in the middle of the first search's output
python -c "import matplotlib.font_manager" > /dev/null 2>&1 || true
echo "setup: done ($(python -c 'import torch, ray, mlflow, onnxruntime as o; print(f"torch {torch.__version__}, ray {ray.__version__}, mlflow {mlflow.__version__}, onnxruntime {o.__version__}")'))"
