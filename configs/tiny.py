"""The embedded default: a 3M-parameter byte-level model on the Python stdlib's source.

RoPE for 120 steps, then RoPE is dropped and the NoPE model recalibrates for 40 steps
with a fresh warmup + cosine schedule. About 2 minutes on 2 CPU cores, no download.

Variants: `rope` (RoPE throughout), `nope` (NoPE throughout), `drope` (default).
"""

from drope_jax import config as config_lib


def get_config(variant: str = "drope"):
  config = config_lib.base_config(variant)

  config.model.vocab_size = 264  # 256 bytes + BOS/EOS/PAD, rounded up to a multiple of 8.
  config.model.d_model = 256
  config.model.n_layers = 4
  config.model.n_heads = 4
  config.model.n_kv_heads = 2
  config.model.head_dim = 64
  config.model.d_ff = 640
  config.model.rope_theta = 10_000.0
  # On CPU a scanned step spends its savings on stacking residuals (zero-filled
  # [layers, ...] buffers, dynamic slices): unrolled, 4 layers compile as fast and run
  # faster (benchmarks/train_throughput; see model.scan_layers in drope_jax/config.py).
  config.model.scan_layers = False

  config.data.source = "stdlib"
  config.data.tokenizer = "byte"

  config.train.steps = 160
  config.train.batch_size = 16
  config.train.seq_len = 256
  config.train.lr = 3e-3
  config.train.warmup_steps = 16
  config.train.log_every = 10
  config.train.eval_every = 40
  config.train.eval_batches = 4

  config.drope.drop_at_step = 120
  config.drope.lr = 1e-3
  config.drope.warmup_steps = 6

  config.checkpoint.every_steps = 40
  return config
