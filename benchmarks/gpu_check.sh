#!/usr/bin/env bash
# The GPU path, checked once on a machine with CUDA (issue 13), in one command with a hard limit:
#   1. the machine: nvidia-smi, torch, the packages used;
#   2. the gpu-marked tests (CUDA training in fp32 and with amp, export of a CUDA-trained model);
#   3. `gpu_check.py`: the baseline at 512 trained on the GPU, fp32 then --amp: epoch time, IoU after
#      N epochs, export (compare with the same script's CPU figure in BENCHMARKS.md);
#   4. the quickstart's search (stage 7 --quick, local Ray, local benchd) with --gpus-per-trial 1,
#      then 0.5, GPU use sampled every second by nvidia-smi; read back from MLflow.
#
#   bash benchmarks/gpu_check.sh [DEST]       # default: $OUT/gpu_check, else runs/gpu_check
#
# On the device machine (no registry there): first `bash benchmarks/gpu_wheels.sh` here, then carry
# .gpu/MANIFEST and one .gpu/part-KK per call (see that script); the last call runs this script,
# which unpacks the parts into /tmp/site. Where the packages are importable already (a venv), it
# uses them as they are. GPU_CHECK_LIMIT_S (default 460) bounds the whole; every step has its own
# cap inside it; DEST/summary.txt has one line per step, DEST/logs.tgz every step's log.
# GPU_CHECK_DRY=1 runs the same steps on the CPU at a tiny scale (no nvidia-smi, no GPU per trial): a
# check of the script itself on a machine without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-${OUT:-runs}/gpu_check}
LIMIT_S=${GPU_CHECK_LIMIT_S:-460}
PY=${PYTHON:-python3}
DRY=${GPU_CHECK_DRY:-0}
if [ "$DRY" = 1 ]; then
  DEVICE=cpu TRAIN_ARGS="--res 64 --epochs 2 --images 16 --workers 0" GPUS="0" SEARCH_ARGS="--epochs 1 --res 64"
else
  DEVICE=cuda TRAIN_ARGS="--res 512 --epochs 10 --workers 8" GPUS="1 0.5" SEARCH_ARGS=""
fi
SMI=nvidia-smi; command -v nvidia-smi > /dev/null || SMI=true
# everything is written to a scratch folder; DEST gets 4 files (the device tool brings back 8 at most):
# summary.txt, gpu_train.json, gpu_search.json and logs.tgz (every step's log and nvidia-smi sample)
OUT_DIR=$(mktemp -d /tmp/gpu-check-XXXX)
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
START=$(date +%s)
pack() {
  mkdir -p "$DEST"
  cp "$SUMMARY" "$DEST/"
  for f in gpu_train.json gpu_search.json; do [ -f "$OUT_DIR/$f" ] && cp "$OUT_DIR/$f" "$DEST/"; done
  tar -C "$OUT_DIR" -czf "$DEST/logs.tgz" .
}
trap pack EXIT
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 RAY_USAGE_STATS_ENABLED=0 MPLBACKEND=Agg

say() { echo "$*" | tee -a "$SUMMARY"; }

step() {  # step NAME CAP_S CMD...: at most CAP_S seconds, never past the whole limit
  local name=$1 cap=$2 t t0 rc
  shift 2
  t=$(( LIMIT_S - ($(date +%s) - START) ))
  (( t > cap )) && t=$cap
  if (( t < 15 )); then say "$name: skipped, the time limit is reached"; return 1; fi
  t0=$(date +%s)
  timeout -k 5 "$t" "$@" > "$OUT_DIR/$name.log" 2>&1
  rc=$?
  say "$name: rc=$rc in $(( $(date +%s) - t0 )) s (cap $t s)$( ((rc == 124)) && echo ', TIMED OUT')"
  return $rc
}

# 0. the packages: importable already, or unpacked from the carried parts
if ! $PY -c "import ray, mlflow, optuna, albumentations" 2>/dev/null; then
  if [ ! -f .gpu/MANIFEST ]; then
    say "packages: ray/mlflow/optuna/albumentations missing and no .gpu/MANIFEST: run benchmarks/gpu_wheels.sh here and carry its parts"
    exit 2
  fi
  want=$(awk '/^parts/ {print $2}' .gpu/MANIFEST)
  have=$(ls .gpu/part-* 2>/dev/null | wc -l)
  if [ "$have" != "$want" ]; then
    say "packages: $have of $want parts here ($(ls .gpu/part-* 2>/dev/null | xargs -n1 basename | tr '\n' ' ')): the machine went cold between calls; carry the missing ones again"
    exit 2
  fi
  mkdir -p /tmp/gpu-wheels && cat .gpu/part-* > /tmp/gpu-wheels/wheels.tar
  if [ "$(sha256sum /tmp/gpu-wheels/wheels.tar | cut -d' ' -f1)" != "$(awk '/^sha256/ {print $2}' .gpu/MANIFEST)" ]; then
    say "packages: the joined parts do not match MANIFEST's sha256 (parts from two different packings?)"
    exit 2
  fi
  tar -C /tmp/gpu-wheels -xf /tmp/gpu-wheels/wheels.tar
  step install 120 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    /tmp/gpu-wheels/wheels/*.whl || exit 2
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # raysearch and benchd from this tree (Ray's workers too)

# 1. the machine
step machine 30 bash -c "$SMI; $PY -c 'import torch, ray, mlflow, onnxruntime as ort, albumentations as A;
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"-\");
print(\"ray\", ray.__version__, \"mlflow\", mlflow.__version__, \"onnxruntime\", ort.__version__, \"albumentations\", A.__version__)'"
tail -2 "$OUT_DIR/machine.log" | tee -a "$SUMMARY"

# 2. the GPU tests
step gpu_tests 120 $PY -m pytest -q -p no:cacheprovider -m gpu tests/training/test_gpu.py
tail -1 "$OUT_DIR/gpu_tests.log" | tee -a "$SUMMARY"

# 3. training at 512 on the GPU, fp32 and amp
step train 150 $PY benchmarks/gpu_check.py --device $DEVICE $TRAIN_ARGS --json "$OUT_DIR/gpu_train.json"
grep '^{' "$OUT_DIR/train.log" | tee -a "$SUMMARY"

# 4. the quickstart's search on the GPU, a whole GPU per trial and half of one
WORK=$(mktemp -d /tmp/gpu-search-XXXX)
for g in $GPUS; do
  $SMI --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 1 > "$OUT_DIR/smi_gpu_$g.csv" 2>&1 &
  smi_gpu=$!
  $SMI --query-compute-apps=timestamp,pid,used_memory --format=csv,noheader -l 1 > "$OUT_DIR/smi_apps_$g.csv" 2>&1 &
  smi_apps=$!
  # shellcheck disable=SC2086
  step "search_gpus_$g" 150 $PY raysearch/stage7.py --quick --gpus-per-trial "$g" --name "gpu-$g" \
    --tracking-uri "sqlite:///$WORK/mlflow.db" --storage-path "$WORK/ray" $SEARCH_ARGS
  kill "$smi_gpu" "$smi_apps" 2>/dev/null
  tail -3 "$OUT_DIR/search_gpus_$g.log" >> "$SUMMARY"
done
step search_summary 60 $PY - "sqlite:///$WORK/mlflow.db" "$OUT_DIR" $GPUS <<'EOF'
import csv, json, statistics, sys
from pathlib import Path
from mlflow.tracking import MlflowClient

from raysearch.records import names as obj

uri, out, gpus = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
client = MlflowClient(uri)
exp = client.get_experiment_by_name("raysearch")
result = {}
for g in gpus:
    parents = client.search_runs([exp.experiment_id], f"tags.mlflow.runName = 'gpu-{g}'") if exp else []
    if not parents:
        result[g] = "no search"
        continue
    p = parents[0]
    kids = client.search_runs([exp.experiment_id], f"tags.`{obj.TAG_PARENT}` = '{p.info.run_id}'")
    util, mem = [], []
    for row in csv.reader(open(out / f"smi_gpu_{g}.csv")):
        try:
            util.append(float(row[1].strip().split()[0])); mem.append(float(row[2].strip().split()[0]))
        except (IndexError, ValueError):
            pass
    per_pid = {}
    for row in csv.reader(open(out / f"smi_apps_{g}.csv")):
        try:
            per_pid[row[1].strip()] = max(per_pid.get(row[1].strip(), 0.0), float(row[2].strip().split()[0]))
        except (IndexError, ValueError):
            pass
    wall = ((p.info.end_time or 0) - p.info.start_time) / 1000
    result[g] = {"status": p.info.status, "wall_s": round(wall, 1), "trials": len(kids),
                 "finished": sum(k.info.status == "FINISHED" for k in kids),
                 "train_seconds": [round(k.data.metrics.get("train_seconds", float("nan")), 1) for k in kids],
                 # what each trial's training allocated on the GPU (torch's peak; absent on the CPU)
                 "trial_gpu_max_memory_mib": [round(k.data.metrics[obj.GPU_MAX_MEMORY_MIB], 1) for k in kids
                                              if obj.GPU_MAX_MEMORY_MIB in k.data.metrics],
                 "gpu_util_pct_mean": round(statistics.fmean(util), 1) if util else None,
                 "gpu_util_pct_max": max(util) if util else None,
                 "gpu_mem_mib_max": max(mem) if mem else None,
                 "processes_on_gpu": len(per_pid), "per_process_mem_mib_max": sorted(per_pid.values(), reverse=True)}
(out / "gpu_search.json").write_text(json.dumps(result, indent=2))
print(json.dumps(result))
EOF
tail -1 "$OUT_DIR/search_summary.log" >> "$SUMMARY"
say "gpu_check: done in $(( $(date +%s) - START )) s; figures in $DEST"
