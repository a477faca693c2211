#!/usr/bin/env bash
# Build the bundle that benchmarks/gpu_suite.py needs on a bare GPU machine (stock torch + torchvision image, no
# network) in the git-ignored folder .gpu/ of this checkout, and check its size:
#   .gpu/cifar10-jpeg.npz          CIFAR-10-JPEG subset: 2,500 training images per class (25,000) + all 10,000 test
#   .gpu/resnet56-cifar10jpeg.pt   the shared ResNet-56 checkpoint
#   .gpu/wheels/*.whl              what autoprune imports and such an image lacks (pure-Python wheels)
# Run here (a machine with ../shared and PyPI):   bash benchmarks/gpu_prepare.sh
# Then on the GPU machine, in the checkout with .gpu/ (device tool: carry [".gpu"]), the one line printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
PY=${PYTHON:-python}
TRAIN_PER_CLASS=${TRAIN_PER_CLASS:-2500}   # part 2 reads at most 150 x 128 training images per run
LIMIT_MB=${LIMIT_MB:-48}                   # the device takes 64 MiB in all, this checkout included

for f in "$SHARED/data/cifar10-jpeg.npz" "$SHARED/models/resnet56-cifar10jpeg.pt"; do
  [ -f "$f" ] || { echo "gpu_prepare: $f not found (set SHARED=/path/to/shared)" >&2; exit 2; }
done
rm -rf .gpu/wheels && mkdir -p .gpu/wheels
$PY benchmarks/gpu_suite.py --make-pack "$SHARED/data/cifar10-jpeg.npz" --data .gpu/cifar10-jpeg.npz \
    --train-per-class "$TRAIN_PER_CLASS"
cp -f "$SHARED/models/resnet56-cifar10jpeg.pt" .gpu/

# The versions tested here (this environment's), else the newest. A stock image has torch, torchvision, numpy,
# pillow, pyyaml, tqdm, matplotlib, tabulate, portalocker, markupsafe, pytest; autoprune imports optuna (alembic,
# sqlalchemy, colorlog; Mako for alembic) and fvcore (iopath, yacs, termcolor). Ray, psycopg and optuna-dashboard
# are imported only by the commands that need them, which the suite does not run.
pin() { $PY - "$1" <<'EOF'
import importlib.metadata as m, sys
try:
    print(f"{sys.argv[1]}=={m.version(sys.argv[1])}")
except m.PackageNotFoundError:
    print(sys.argv[1])
EOF
}
PURE=(optuna alembic colorlog mako yacs termcolor torch-pruning timm)   # torch-pruning: parts 8, 9; timm: part 9
SDIST=(fvcore iopath)                                   # published as sources only: built into wheels here
BINARY=(sqlalchemy)                                     # has compiled wheels: take the device's (CPython 3.12)
$PY -m pip download -q --no-deps --only-binary=:all: -d .gpu/wheels $(for p in "${PURE[@]}"; do pin "$p"; done)
$PY -m pip wheel -q --no-deps -w .gpu/wheels $(for p in "${SDIST[@]}"; do pin "$p"; done)
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels \
    $(for p in "${BINARY[@]}"; do pin "$p"; done)

ls -l .gpu .gpu/wheels
size_kb=$(du -sk .gpu --exclude=work --exclude=site | cut -f1)
tree_kb=$(git ls-files -z | du -ck --files0-from=- | tail -1 | cut -f1)
echo "bundle .gpu/: $((size_kb / 1024)) MiB; tracked files of this checkout: $((tree_kb / 1024)) MiB"
if [ "$size_kb" -gt $((LIMIT_MB * 1024)) ]; then
  echo "gpu_prepare: the bundle is over ${LIMIT_MB} MiB: lower TRAIN_PER_CLASS" >&2
  exit 1
fi
cat <<'EOF'
On the GPU machine (device tool: carry [".gpu"]), one line:
python3 -m pip install -q --no-index --no-deps --target .gpu/site .gpu/wheels/*.whl && PYTHONPATH=$PWD:$PWD/.gpu/site python3 benchmarks/gpu_suite.py --data .gpu/cifar10-jpeg.npz --weights .gpu/resnet56-cifar10jpeg.pt
EOF
