#!/usr/bin/env bash
# Packs the Python packages the GPU machine lacks for `benchmarks/gpu_check.sh` (Ray, MLflow, Optuna,
# albumentations, grpcio and protobuf at our versions: the machine reaches no package registry) as
# wheels for its Python 3.12, in parts small enough to travel one per device call.
#
#   bash benchmarks/gpu_wheels.sh            # here, once: writes .gpu/part-00 .. part-NN + MANIFEST
#
# Then, on the device machine, one call per part while it stays warm (each call carries `.gpu/part-KK`
# and `.gpu/MANIFEST`; what an earlier call carried stays on a warm machine), and the check itself
# with the last part: `bash benchmarks/gpu_check.sh`. The check says which parts are missing when the
# machine went cold in between. Skips packages the machine already has (the list below is the device
# tool's list of its image, read 2026-11-17); torch is never packed: the machine's CUDA build is used.
set -euo pipefail
cd "$(dirname "$0")/.."
PART_MIB=${PART_MIB:-56}  # + the working tree (~2 MiB) under the tool's 64 MiB per call
DEST=.gpu
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf "$DEST" && mkdir -p "$DEST/wheels"

platforms=()
for p in manylinux1 manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 \
         manylinux_2_34 manylinux_2_35; do platforms+=(--platform "${p}_x86_64"); done
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d "$DEST/wheels" "ray[tune]==2.60.0" "mlflow==3.17.2" "optuna==4.9.0" "albumentations==2.0.8" \
  "grpcio==1.85.1" "grpcio-health-checking==1.85.1" "grpcio-reflection==1.85.1" "protobuf>=7.35.1,<8" \
  "numpy<2.6" "torchinfo" 2>&1 | grep -v "is ignored" || true

# what the machine's image already holds (never grpcio/protobuf: the stubs need our versions)
HAVE="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cycler cython filelock flatbuffers fonttools
frozenlist fsspec h11 h5py httpcore httpx idna imageio iniconfig jinja2 joblib kiwisolver lazy-loader markdown
markdown-it-py markupsafe matplotlib mdurl ml-dtypes mpmath msgpack multidict networkx numpy onnx onnx-ir onnxruntime
onnxscript opencv-python-headless packaging pandas pathspec pillow pip pluggy portalocker prometheus-client propcache
psutil pyarrow pygments pyparsing python-dateutil pytest pytest-timeout pyyaml regex requests rich scikit-image
scikit-learn scipy setuptools six sympy tabulate threadpoolctl tqdm typing-extensions urllib3 werkzeug wheel wrapt
yarl zipp"
for w in "$DEST"/wheels/*.whl; do
  name=$(basename "$w" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')
  if tr ' ' '\n' <<<"$HAVE" | grep -qxF -- "$name" && [ "$name" != grpcio ] && [ "$name" != protobuf ]; then
    rm "$w"
  fi
done
tar -C "$DEST" -cf "$DEST/wheels.tar" wheels
rm -rf "$DEST/wheels"
split -b "${PART_MIB}m" -d -a 2 "$DEST/wheels.tar" "$DEST/part-"
parts=$(ls "$DEST"/part-* | wc -l)
{ echo "parts $parts"; echo "sha256 $(sha256sum "$DEST/wheels.tar" | cut -d' ' -f1)"; } > "$DEST/MANIFEST"
rm "$DEST/wheels.tar"
ls -l "$DEST"
echo "gpu_wheels: $parts part(s) of at most $PART_MIB MiB in $DEST; carry one per device call (see gpu_check.sh)"
