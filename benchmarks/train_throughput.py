r"""drope_jax training throughput beside Hugging Face + PyTorch on the same shapes.

  python -m benchmarks.train_throughput --config=configs/tiny.py [--steps=20] [--torch]

Times the real jitted train step (forward, loss, backward, clipping, AdamW) on random
tokens at the config's batch x seq, after warmup, on this machine's devices. With
--torch, also times LlamaForCausalLM + torch AdamW (benchmarks/torch_baseline.py).
"""

import statistics
import time

import jax
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from drope_jax import flops
from drope_jax import optim
from drope_jax import parallel
from drope_jax import plan as plan_lib
from drope_jax import train_step

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "drope_jax config.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "untimed steps first (compilation included).")
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps.")
_TORCH = flags.DEFINE_bool("torch", True, "also time the Hugging Face + PyTorch baseline.")


def random_batch(config, rng: np.random.Generator) -> dict:
  t, vocab = config.train, config.model.vocab_size
  tokens = rng.integers(0, vocab, (t.batch_size, t.seq_len + 1), dtype=np.int32)
  shape = (t.batch_size, t.seq_len)
  return dict(inputs=tokens[:, :-1], targets=tokens[:, 1:],
              positions=np.broadcast_to(np.arange(t.seq_len, dtype=np.int32), shape),
              segment_ids=np.ones(shape, np.int32), weights=np.ones(shape, np.float32))


def drope_jax_seconds_per_step(config, warmup: int, steps: int) -> float:
  """Seconds per step of the run's first phase."""
  mesh = parallel.make_mesh(config.mesh)
  tx = optim.make_optimizer(config.train)
  built, init = train_step.build(config, mesh, tx)
  step_fn = train_step.make_train_step(config, built, optim.lr_schedule(config),
                                       plan_lib.make(config).phases[0].positional)
  state = init()
  sharding = parallel.batch_sharding(mesh)
  rng = np.random.default_rng(0)
  batches = [jax.device_put(random_batch(config, rng), sharding) for _ in range(4)]
  for i in range(warmup):
    state, metrics = step_fn(state, batches[i % 4])
  jax.block_until_ready(metrics)
  step_seconds = []
  for i in range(steps):
    start = time.perf_counter()
    state, metrics = step_fn(state, batches[i % 4])
    jax.block_until_ready(metrics)
    step_seconds.append(time.perf_counter() - start)
  # The median step: robust to other processes stealing the CPU now and then.
  return statistics.median(step_seconds)


def main(argv):
  del argv
  config = _CONFIG.value
  t = config.train
  tokens = t.batch_size * t.seq_len
  per_token = flops.training_flops_per_token(config.model, t.seq_len)
  rows = [("drope_jax (jit, AdamW)",
           drope_jax_seconds_per_step(config, _WARMUP.value, _STEPS.value))]
  if _TORCH.value:
    from benchmarks import torch_baseline  # pylint: disable=g-import-not-at-top
    rows.append(("HF LlamaForCausalLM + torch AdamW",
                 torch_baseline.seconds_per_step(config, warmup=_WARMUP.value,
                                                 steps=_STEPS.value)))
  n_params = flops.params_count(config.model)["total"]
  print(f"{jax.devices()[0].device_kind} x{jax.device_count()}; {n_params / 1e6:.2f}M params; "
        f"batch {t.batch_size} x seq {t.seq_len}; {_STEPS.value} timed steps")
  print("| trainer | median step s | tokens/s | model GFLOP/s |")
  print("|---|---|---|---|")
  for name, seconds in rows:
    print(f"| {name} | {seconds:.3f} | {tokens / seconds:,.0f} | "
          f"{tokens / seconds * per_token / 1e9:.1f} |")


if __name__ == "__main__":
  app.run(main)
