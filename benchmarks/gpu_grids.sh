#!/usr/bin/env bash
# The GPU-scale grids as one prepared device run: the prose grid (configs/reproduce_gpu.py)
# and the synthetic recall rung (configs/ladder_gpu.py), each sized for under 10 minutes
# on one H100. The device machine cannot fetch anything and its image has its own JAX
# (0.11.x with a CUDA plugin) but not every package this project needs, so:
#
#   bash benchmarks/gpu_grids.sh prepare     # here, once: .device/ = wheels + prose shards
#   # then the device tool's run, carrying .device:
#   #   command: bash benchmarks/gpu_grids.sh run     carry: [".device"]
#
# `run` installs the carried wheels (no index), prints the versions it runs on into the
# reports, runs both grids and packs their reports and plots into $OUT/gpu_grids.tar.gz.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:?usage: gpu_grids.sh prepare|run}"
DEVICE_DIR=.device
# What the device image lacks (KINDS.md of the device tool lists what it has).
MISSING="grain==0.2.18 array-record==0.8.6 ml-collections==1.1.0 tensorboardX==2.6.5"

if [[ "$mode" == prepare ]]; then
  grep -qx "/$DEVICE_DIR/" .git/info/exclude || echo "/$DEVICE_DIR/" >> .git/info/exclude
  mkdir -p "$DEVICE_DIR/wheels"
  pip download --quiet --dest "$DEVICE_DIR/wheels" --only-binary=:all: \
      --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
      $MISSING
  # The prose grid's tokenizer and shards (the device cannot see ../shared).
  python -m benchmarks.reproduce --scale=gpu --out="$DEVICE_DIR/prose" --stages=data
  du -sh "$DEVICE_DIR"
  exit 0
fi

[[ "$mode" == run ]] || { echo "usage: gpu_grids.sh prepare|run" >&2; exit 2; }
OUT="${OUT:?run on the device machine, where \$OUT is set}"
python3 -m pip install --quiet --no-index --find-links "$DEVICE_DIR/wheels" $MISSING
versions="$(python3 -c 'import jax, flax, optax, orbax.checkpoint as o, grain
print(f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}, "
      f"orbax {o.__version__}, grain {grain.__version__}; devices {jax.devices()}")')"
echo "$versions" | tee "$OUT/versions.txt"
results=gpu_results
mkdir -p "$results"
# Each grid resumes where it stopped, so a second call finishes a cut-off first one.
timeout 280 python3 -m benchmarks.reproduce --scale=gpu --task=recall --out="$results/recall" \
    --runs=rope,nope,drope,drope_half || echo "recall grid stopped (rerun to resume)"
timeout 280 python3 -m benchmarks.reproduce --scale=gpu --out="$DEVICE_DIR/prose" \
    --stages=train,evaluate,report --steps=2000 || echo "prose grid stopped (rerun to resume)"
for report in "$results/recall/report.md" "$DEVICE_DIR/prose/report.md"; do
  [[ -f "$report" ]] && printf '\nRan on: %s\n' "$versions" >> "$report"
done
tar czf "$OUT/gpu_grids.tar.gz" "$results"/recall/*.md "$results"/recall/*.png \
    "$DEVICE_DIR"/prose/*.md "$DEVICE_DIR"/prose/*.png 2>/dev/null || true
