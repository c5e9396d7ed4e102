r"""drope_jax training throughput beside Hugging Face + PyTorch on the same shapes.

  python -m benchmarks.train_throughput --config=configs/tiny.py [--steps=20] [--rounds=4]

Times the real jitted train step (forward, loss, backward, clipping, AdamW) on random
tokens at the config's batch x seq, after warmup, on this machine's devices. With
--torch (the default), LlamaForCausalLM + torch AdamW (benchmarks/torch_baseline.py)
runs in the same process, the two trainers taking turns in `rounds`: a shared machine
whose speed drifts by 10% within a minute then slows both alike, and the ratio is the
median of the rounds' ratios. The CPU's model and vector extensions are printed beside
the figures: a ratio holds for one kind of host.
"""

import statistics
import time

import jax
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from benchmarks import host
from drope_jax import flops
from drope_jax import optim
from drope_jax import parallel
from drope_jax import plan as plan_lib
from drope_jax import train_step

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "drope_jax config.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "untimed steps first (compilation included).")
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps per trainer, over all rounds.")
_ROUNDS = flags.DEFINE_integer("rounds", 4, "turns each trainer takes.")
_TORCH = flags.DEFINE_bool("torch", True, "also time the Hugging Face + PyTorch baseline.")


def random_batch(config, rng: np.random.Generator) -> dict:
  t, vocab = config.train, config.model.vocab_size
  tokens = rng.integers(0, vocab, (t.batch_size, t.seq_len + 1), dtype=np.int32)
  shape = (t.batch_size, t.seq_len)
  return dict(inputs=tokens[:, :-1], targets=tokens[:, 1:],
              positions=np.broadcast_to(np.arange(t.seq_len, dtype=np.int32), shape),
              segment_ids=np.ones(shape, np.int32), weights=np.ones(shape, np.float32))


def make_drope_jax_step(config):
  """The run's first-phase train step on random batches, as a blocking call."""
  mesh = parallel.make_mesh(config.mesh)
  tx = optim.make_optimizer(config.train)
  built, init = train_step.build(config, mesh, tx)
  step_fn = train_step.make_train_step(config, built, optim.lr_schedule(config),
                                       plan_lib.make(config).phases[0].positional)
  sharding = parallel.batch_sharding(mesh)
  rng = np.random.default_rng(0)
  batches = [jax.device_put(random_batch(config, rng), sharding) for _ in range(4)]
  state, count = [init()], [0]

  def step():
    state[0], metrics = step_fn(state[0], batches[count[0] % len(batches)])
    count[0] += 1
    jax.block_until_ready(metrics)

  return step


def time_steps(step, n: int) -> list[float]:
  seconds = []
  for _ in range(n):
    start = time.perf_counter()
    step()
    seconds.append(time.perf_counter() - start)
  return seconds


def drope_jax_seconds_per_step(config, warmup: int, steps: int) -> float:
  """Median seconds per step of the run's first phase."""
  step = make_drope_jax_step(config)
  time_steps(step, warmup)
  return statistics.median(time_steps(step, steps))


def main(argv):
  del argv
  config = _CONFIG.value
  t = config.train
  tokens = t.batch_size * t.seq_len
  per_token = flops.training_flops_per_token(config.model, t.seq_len)
  trainers = {"drope_jax (jit, AdamW)": make_drope_jax_step(config)}
  if _TORCH.value:
    from benchmarks import torch_baseline  # pylint: disable=g-import-not-at-top
    trainers["HF LlamaForCausalLM + torch AdamW"] = torch_baseline.make_step(config)
  for step in trainers.values():
    time_steps(step, _WARMUP.value)
  per_round = max(_STEPS.value // _ROUNDS.value, 1)
  rounds = {name: [] for name in trainers}  # per trainer: each round's median step.
  for _ in range(_ROUNDS.value):
    for name, step in trainers.items():
      rounds[name].append(statistics.median(time_steps(step, per_round)))

  n_params = flops.params_count(config.model)["total"]
  print(f"{jax.devices()[0].device_kind} x{jax.device_count()}; {n_params / 1e6:.2f}M params; "
        f"batch {t.batch_size} x seq {t.seq_len}; {_ROUNDS.value} rounds of {per_round} "
        "timed steps per trainer")
  print(f"CPU: {host.cpu_flags()}")
  print("| trainer | median step s | tokens/s | model GFLOP/s |")
  print("|---|---|---|---|")
  for name, seconds in rounds.items():
    median = statistics.median(seconds)
    print(f"| {name} | {median:.3f} | {tokens / median:,.0f} | "
          f"{tokens / median * per_token / 1e9:.1f} |")
  if len(rounds) == 2:
    ours, theirs = rounds.values()
    ratios = [b / a for a, b in zip(ours, theirs)]
    print(f"drope_jax / PyTorch tokens/s: {statistics.median(ratios):.2f} (median of the "
          f"rounds; range {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
  app.run(main)
