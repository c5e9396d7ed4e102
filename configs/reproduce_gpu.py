"""The DroPE grid at GPU scale (benchmarks/reproduce.py --scale=gpu): ~90M parameters.

The CPU grid's recipe (BPE on the shared corpus, RULER needle documents at the
training length) on a GPT-2-small-sized model at 1024 tokens: 12 layers, d 768,
vocab 16,384, 64 x 1024 tokens per step, 8,000 steps (~0.5B tokens). Not yet run:
no GPU was available when it was written; expect ~20-30 minutes per run on an H200.

Variants: `rope`, `nope`, `drope`.
"""

from drope_jax import config as config_lib


def get_config(variant: str = "drope"):
  config = config_lib.base_config(variant)

  config.model.vocab_size = 16_384
  config.model.d_model = 768
  config.model.n_layers = 12
  config.model.n_heads = 12
  config.model.n_kv_heads = 4
  config.model.head_dim = 64
  config.model.d_ff = 2048
  config.model.rope_theta = 10_000.0
  config.model.dtype = "bfloat16"

  config.data.source = "shards,needles"
  # Documents whole in a row: with concat packing most needle documents (about the
  # row's length) would be cut, their question landing in a row without the needle.
  config.data.packing = "first_fit"
  config.data.tokenizer = "hf:tokenizer/tokenizer.json"
  config.data.weights = "1,10"
  config.data.needle_variants = "single,multikey,multiquery,multivalue"

  config.train.steps = 8000
  config.train.batch_size = 64
  config.train.seq_len = 1024
  config.train.lr = 6e-4
  config.train.warmup_steps = 260
  config.train.log_every = 50
  config.train.eval_every = 1000
  config.train.eval_batches = 8

  config.drope.drop_at_step = 7000
  config.drope.lr = 1e-3
  config.drope.warmup_steps = 35

  config.checkpoint.every_steps = 500
  config.checkpoint.max_to_keep = 2
  config.checkpoint.keep_period = 500
  return config
