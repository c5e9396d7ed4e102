"""`python -m drope_jax.hf import|export`: Hugging Face checkpoints in and out.

  python -m drope_jax.hf import --hf=DIR|FILE.gguf --workdir=W [--tokenizer=DIR|FILE]
      [--param_dtype=float32] [--mesh=-1,1,1]
  python -m drope_jax.hf export --workdir=W [--step=N] --out=DIR [--dtype=bfloat16]
      [--max_shard_gb=5]

`import` writes W as a step-0 RoPE run (evaluate / generate / train
--config.checkpoint.init_from=W work on it) and prints the command that
recalibrates it with DroPE; `--tokenizer` gives the tokenizer of weights that came
without one (a directory holding tokenizer.json, or the file itself). `export`
writes safetensors + config.json + tokenizer files; a NoPE (DroPE-recalibrated) model
ships modeling_drope.py, loaded with trust_remote_code=True. Bad input: a message and
exit code 2, nothing written.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from drope_jax.eval import loading
from drope_jax.hf import convert
from drope_jax.hf import export
from drope_jax.hf import gguf
from drope_jax.hf import importer

_HF = flags.DEFINE_string("hf", None, "import: the Hugging Face model directory, or a "
                          "llama.cpp .gguf file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory.")
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None, "import: the tokenizer when --hf=DIR has none: a directory "
    "holding tokenizer.json (and tokenizer_config.json), or a tokenizer.json file.")
_PARAM_DTYPE = flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16"],
                                 "import: the run's master-weight dtype.")
_MESH = flags.DEFINE_list("mesh", ["-1", "1", "1"],
                          "import: mesh (data, fsdp, tensor) the weights are placed on.")
_STEP = flags.DEFINE_integer("step", None, "export: checkpoint step; default the latest.")
_OUT = flags.DEFINE_string("out", None, "export: the output directory (new or empty).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                           "export: tensor dtype; default the source's (else the run's).")
_MAX_SHARD_GB = flags.DEFINE_float("max_shard_gb", 5.0, "export: shard size limit.")

COMMANDS = ("import", "export")


def recalibrate_command(workdir: str, config) -> str:
  return (f"python -m drope_jax.train --config={workdir}/config.py "
          f"--workdir={workdir}-drope --config.checkpoint.init_from={workdir} "
          "--config.model.pos_emb=nope --config.model.qk_norm="
          f"{'head_qk' if config.model.qk_norm == 'head_qk' else 'q'} "
          "--config.train.lr=1e-3 --config.train.warmup_steps=490 "
          "--config.data.source=shards --config.data.paths=...")


def _import():
  if not _HF.value or not _WORKDIR.value:
    raise convert.HFError("import needs --hf=DIR (or FILE.gguf) and --workdir=W")
  try:
    mesh = tuple(int(s) for s in _MESH.value)
  except ValueError as e:
    raise convert.HFError(f"--mesh={','.join(_MESH.value)}: give three integers") from e
  if _HF.value.endswith(".gguf"):
    if _TOKENIZER.value:
      raise convert.HFError("a GGUF file carries its own tokenizer: --tokenizer is for "
                            "a Hugging Face directory whose tokenizer is elsewhere")
    hf_config, tensors, files = gguf.read_gguf(_HF.value)
  else:
    hf_config, tensors, files = importer.read_directory(_HF.value, _TOKENIZER.value)
  config = convert.import_model(hf_config, tensors, files, _WORKDIR.value,
                                param_dtype=_PARAM_DTYPE.value, mesh_shape=mesh)
  workdir = _WORKDIR.value
  print(f"imported {hf_config['architectures'][0]} into {workdir} (step 0, context "
        f"{config.train.seq_len}, vocab {config.model.vocab_size}, text framing "
        f"{config.data.framing}).\n"
        f"  evaluate:    python -m drope_jax.evaluate --workdir={workdir}\n"
        f"  generate:    python -m drope_jax.generate --workdir={workdir} --prompt=...\n"
        f"  recalibrate: {recalibrate_command(workdir, config)}", flush=True)


def _export():
  if not _WORKDIR.value or not _OUT.value:
    raise convert.HFError("export needs --workdir=W and --out=DIR")
  files = export.export(_WORKDIR.value, _OUT.value, step=_STEP.value, dtype=_DTYPE.value,
                        max_shard_bytes=int(_MAX_SHARD_GB.value * 2**30))
  print(f"wrote {len(files)} files to {_OUT.value}: {', '.join(files)}", flush=True)


def main(argv):
  logging.set_verbosity(logging.ERROR)  # orbax is chatty.
  if len(argv) != 2 or argv[1] not in COMMANDS:
    print(f"usage: python -m drope_jax.hf {{{'|'.join(COMMANDS)}}} --flags...",
          file=sys.stderr)
    sys.exit(2)
  try:
    if argv[1] == "import":
      _import()
    else:
      _export()
  except (convert.HFError, loading.RunError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
