#!/usr/bin/env bash
# The in-the-wild DroPE workflow at the model's own context, as one prepared device run:
# SmolLM2-135M imported from its GGUF, evaluated at 8K and 16K (RoPE as is, PI, NTK,
# YaRN), recalibrated without RoPE and with QK-norm at 8K, evaluated again, exported
# (benchmarks/in_the_wild.py with --seq_len=8192: its proxy length made the real one).
#
# A device call carries at most 64 MiB and the GGUF is 98 MB, so it travels in two
# halves, one per call; the first half stays on the warm machine as an ignored file:
#
#   bash benchmarks/gpu_in_the_wild.sh prepare   # here, once: .device_wild/{a,b,common}
#   # device run 1: command "bash benchmarks/gpu_in_the_wild.sh land"  carry [".device_wild/a"]
#   # device run 2 (same warm machine, at once):
#   #   command "bash benchmarks/gpu_in_the_wild.sh run"  carry [".device_wild/b", ".device_wild/common"]
#
# `run` joins the halves (sha256-checked), installs the carried wheels (no index), prints
# the versions it runs on into the report, and packs the report into $OUT. Every stage
# resumes where it stopped, so rerunning `run` finishes a cut-off first one.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:?usage: gpu_in_the_wild.sh prepare|land|run}"
DIR=.device_wild
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
# What the device image lacks (the device tool's KINDS.md lists what it has).
MISSING="grain==0.2.18 array-record==0.8.6 ml-collections==1.1.0 tensorboardX==2.6.5 gguf==0.19.0"
STEPS=150            # x 8 rows x 8,192 tokens: 9.8M tokens of recalibration.

if [[ "$mode" == prepare ]]; then
  gguf="${GGUF:-../shared/models/$GGUF_NAME}"
  grep -qx "/$DIR/" .git/info/exclude || echo "/$DIR/" >> .git/info/exclude
  mkdir -p "$DIR/a" "$DIR/b" "$DIR/common/wheels"
  half=$(( ($(stat -c %s "$gguf") + 1) / 2 ))
  head -c "$half" "$gguf" > "$DIR/a/gguf.part"
  tail -c +"$(( half + 1 ))" "$gguf" > "$DIR/b/gguf.part"
  sha256sum < "$gguf" | cut -d' ' -f1 > "$DIR/common/gguf.sha256"
  pip download --quiet --dest "$DIR/common/wheels" --only-binary=:all: --no-deps \
      --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
      $MISSING
  # The recalibration data, tokenized here with the model's own tokenizer (the device
  # cannot see ../shared): the run finds DIR/run/data and skips its prepare stage.
  scratch="$(mktemp -d)"
  python -m drope_jax.hf import --hf="$gguf" --workdir="$scratch/base"
  python -m drope_jax.data.prepare --input=../shared/corpus/nltk.jsonl.gz \
      --output="$DIR/common/data" --tokenizer="hf:$scratch/base/hf/tokenizer.json"
  rm -rf "$scratch"
  du -sh "$DIR"/*
  exit 0
fi

if [[ "$mode" == land ]]; then
  ls -l "$DIR/a/gguf.part"  # the first half is now on the machine; keep it warm.
  exit 0
fi

[[ "$mode" == run ]] || { echo "usage: gpu_in_the_wild.sh prepare|land|run" >&2; exit 2; }
OUT="${OUT:?run on the device machine, where \$OUT is set}"
[[ -f "$DIR/a/gguf.part" ]] || { echo "the first half is not here: run 'land' first" >&2; exit 2; }
cat "$DIR/a/gguf.part" "$DIR/b/gguf.part" > "/tmp/$GGUF_NAME"
[[ "$(sha256sum < "/tmp/$GGUF_NAME" | cut -d' ' -f1)" == "$(cat "$DIR/common/gguf.sha256")" ]] \
    || { echo "the joined GGUF's sha256 differs: prepare again" >&2; exit 2; }
python3 -m pip install --quiet --no-index --no-deps --find-links "$DIR/common/wheels" $MISSING
versions="$(python3 -c 'import jax, flax, optax, orbax.checkpoint as o, grain, transformers
print(f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}, "
      f"orbax {o.__version__}, grain {grain.__version__}, transformers "
      f"{transformers.__version__}; devices {jax.devices()}")')"
echo "$versions" | tee "$OUT/versions.txt"
run_dir=gpu_results/in_the_wild
mkdir -p "$run_dir"
[[ -d "$run_dir/data" ]] || cp -r "$DIR/common/data" "$run_dir/data"
timeout 540 python3 -m benchmarks.in_the_wild --out="$run_dir" --gguf="/tmp/$GGUF_NAME" \
    --corpus="$run_dir/data" --seq_len=8192 --batch_size=8 --steps="$STEPS" --lr=3e-4 \
    --eval_tokens=32768 --niah_trials=2 || echo "stopped (run again to resume)"
[[ -f "$run_dir/report.md" ]] && printf '\nRan on: %s\n' "$versions" >> "$run_dir/report.md"
cp "$run_dir"/report.md "$OUT/" 2>/dev/null || true
tar czf "$OUT/in_the_wild_logs.tar.gz" "$run_dir/logs" 2>/dev/null || true
