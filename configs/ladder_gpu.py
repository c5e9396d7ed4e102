"""The synthetic-task ladder at GPU scale (benchmarks/reproduce.py --scale=gpu --task=RUNG).

    --config=configs/ladder_gpu.py:RUNG:VARIANT     e.g. recall:rope

configs/ladder_cpu.py's rungs on a 4-layer d 256 model at 256 tokens, 64 sequences
per step, sized for about a minute per full run on one H100 (a rung's grid, ~4 run
equivalents with the sweep, plus evaluation, in under 10 minutes). Not yet run on a
GPU: no device was lent when it was written.
"""

from drope_jax import config as config_lib

# rung -> (data.source, data.weights, train.steps, task settings)
RUNGS = {
    "recall": ("recall", None, 2000, dict(pairs=16, vocab=96, filler_vocab=64)),
    "copy": ("copy", None, 600, dict(vocab=96, filler_vocab=64)),
    "induction": ("induction", None, 2000, dict(pairs=2, span=16, vocab=96,
                                                 filler_vocab=64)),
    "mix": ("stdlib,induction", "1,1", 2000, dict(pairs=2, span=16, vocab=96,
                                                   filler_vocab=64)),
}


def get_config(arg: str = "recall:drope"):
  rung, _, variant = arg.partition(":")
  if rung not in RUNGS:
    raise ValueError(f"unknown rung {rung!r}: use one of {', '.join(RUNGS)} "
                     "(configs/ladder_gpu.py:RUNG:VARIANT)")
  source, weights, steps, task = RUNGS[rung]
  config = config_lib.base_config(variant or "drope")

  config.model.vocab_size = 264
  config.model.d_model = 256
  config.model.n_layers = 4
  config.model.n_heads = 8
  config.model.n_kv_heads = 4
  config.model.head_dim = 32
  config.model.d_ff = 1024
  config.model.rope_theta = 10_000.0
  config.model.dtype = "bfloat16"

  config.data.source = source
  config.data.weights = weights
  config.data.tokenizer = "byte"
  config.data.packing = "first_fit" if "," in source else "concat"
  config.data.task.update(task)
  config.data.num_workers = 4

  config.train.steps = steps
  config.train.batch_size = 64
  config.train.seq_len = 256
  config.train.lr = 1e-3
  config.train.warmup_steps = 100
  config.train.log_every = 50
  config.train.eval_every = 50
  config.train.eval_batches = 4

  config.drope.drop_at_step = steps * 7 // 8
  config.drope.lr = 1e-3
  config.drope.warmup_steps = 20

  config.checkpoint.every_steps = steps // 8
  config.checkpoint.max_to_keep = 2
  config.checkpoint.keep_period = steps // 8
  return config
