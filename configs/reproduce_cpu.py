"""The DroPE grid at CPU scale (benchmarks/reproduce.py --scale=cpu).

A 4-layer BPE model on the shared English corpus, with RULER needle documents
in the mixture at the training length, sized so the whole grid (RoPE, NoPE,
DroPE at 87.5% and at 50% of the steps) trains and evaluates on 2 CPU cores in
about 2 hours. benchmarks/reproduce.py fills in data paths and the drop step.

Variants: `rope`, `nope`, `drope`.
"""

from drope_jax import config as config_lib


def get_config(variant: str = "drope"):
  config = config_lib.base_config(variant)

  config.model.vocab_size = 4096
  config.model.d_model = 256
  config.model.n_layers = 4
  config.model.n_heads = 4
  config.model.n_kv_heads = 2
  config.model.head_dim = 64
  config.model.d_ff = 768
  config.model.rope_theta = 10_000.0
  config.model.scan_layers = False  # faster on CPU, as in configs/tiny.py.

  config.data.source = "shards,needles"
  # Documents whole in a row: with concat packing most needle documents (about the
  # row's length) would be cut, their question landing in a row without the needle.
  config.data.packing = "first_fit"
  config.data.tokenizer = "hf:tokenizer/tokenizer.json"
  config.data.weights = "1,10"  # documents: ~27% of tokens are needle documents.
  config.data.needle_variants = "single,multikey,multivalue"  # multiquery needs > 256.

  config.train.steps = 1000
  config.train.batch_size = 16
  config.train.seq_len = 256
  config.train.lr = 3e-3
  config.train.warmup_steps = 50
  config.train.log_every = 20
  config.train.eval_every = 125
  config.train.eval_batches = 8

  config.drope.drop_at_step = 875
  config.drope.lr = 1e-3
  config.drope.warmup_steps = 20

  config.checkpoint.every_steps = 125
  config.checkpoint.max_to_keep = 2
  config.checkpoint.keep_period = 125  # the DroPE runs branch from these.
  return config
