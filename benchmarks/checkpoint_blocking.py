r"""How long a checkpoint save blocks the step loop, against the step time.

  python -m benchmarks.checkpoint_blocking [--models=tiny,100m] [--saves=3] \
      [--directory=/tmp/drope_ckpt_bench]

The trainer calls `Checkpointer.save()` between steps; with async saves it returns once
the arrays are copied off the devices, and the write goes on in the background. This
times, per model: a step alone; the `save()` call (the first one apart: it sets orbax
up); the background write when nothing else runs; a step taken while a write is under
way (on CPU the write competes with the step for cores). `directory` may be gs://.
"""

import time

import jax
import numpy as np
from absl import app
from absl import flags
from etils import epath

from configs import tiny
from drope_jax import checkpoint
from drope_jax import optim
from drope_jax import parallel
from drope_jax import plan as plan_lib
from drope_jax import train_step

_MODELS = flags.DEFINE_list("models", ["tiny", "100m"], "tiny (configs/tiny.py), 100m.")
_SAVES = flags.DEFINE_integer("saves", 3, "Saves timed after the first.")
_DIRECTORY = flags.DEFINE_string("directory", "/tmp/drope_ckpt_bench",
                                 "Where checkpoints go (emptied first).")

# A Llama-shaped ~100M model (GPT-2-small widths, 32K vocabulary), a short CPU batch.
_100M = dict(vocab_size=32_000, d_model=768, n_layers=12, n_heads=12, n_kv_heads=4,
             head_dim=64, d_ff=2048)


def _config(name: str):
  config = tiny.get_config("rope")
  if name == "100m":
    config.model.update(_100M)
    config.train.batch_size, config.train.seq_len = 4, 256
  return config


def _batch(config, mesh):
  b, s = config.train.batch_size, config.train.seq_len
  tokens = np.random.default_rng(0).integers(0, config.model.vocab_size, (b, s + 1))
  batch = dict(inputs=tokens[:, :-1], targets=tokens[:, 1:],
               positions=np.broadcast_to(np.arange(s), (b, s)),
               segment_ids=np.ones((b, s)), weights=np.ones((b, s)))
  dtypes = dict(segment_ids=np.int32, weights=np.float32)
  sharding = parallel.batch_sharding(mesh)
  return {k: jax.device_put(v.astype(dtypes.get(k, np.int32)), sharding)
          for k, v in batch.items()}


def _step_seconds(step_fn, state, batch):
  start = time.perf_counter()
  state, metrics = step_fn(state, batch)
  jax.block_until_ready((state, metrics))
  return state, time.perf_counter() - start


def measure(name: str) -> dict:
  config = _config(name)
  mesh = parallel.make_mesh(config.mesh)
  tx = optim.make_optimizer(config.train)
  built, init = train_step.build(config, mesh, tx)
  step_fn = train_step.make_train_step(
      config, built, optim.lr_schedule(config),
      plan_lib.make(config).phases[0].positional)
  state, batch = init(), _batch(config, mesh)
  directory = epath.Path(_DIRECTORY.value) / name
  if directory.exists():
    directory.rmtree()
  ckpt = checkpoint.Checkpointer(str(directory), config.checkpoint)
  meta = dict(config=config.to_dict())

  for _ in range(2):  # compile, warm up.
    state, _ = _step_seconds(step_fn, state, batch)
  plain = []
  for _ in range(3):
    state, seconds = _step_seconds(step_fn, state, batch)
    plain.append(seconds)

  def save(step):
    start = time.perf_counter()
    ckpt.save(step, state, None, meta)
    return start, time.perf_counter() - start

  start, first_save = save(1)
  ckpt.wait()
  blocking, idle_write, during = [], [], []
  for i in range(_SAVES.value):
    start, seconds = save(2 + 2 * i)  # a write with nothing else running.
    blocking.append(seconds)
    ckpt.wait()
    idle_write.append(time.perf_counter() - start)
    save(3 + 2 * i)  # a write while the loop steps on.
    state, seconds = _step_seconds(step_fn, state, batch)
    during.append(seconds)
    ckpt.wait()
  ckpt.close()
  directory.rmtree()
  params = sum(x.size for x in jax.tree.leaves(state.params))
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  return dict(name=name, params=params, mb=state_bytes / 2**20, step=np.median(plain),
              first_save=first_save, save=np.median(blocking),
              write=np.median(idle_write), during=np.median(during))


def main(argv):
  del argv
  rows = [measure(name) for name in _MODELS.value]
  print(f"\n{jax.device_count()} {jax.devices()[0].platform} device(s); medians of "
        f"{_SAVES.value} saves; directory {_DIRECTORY.value}")
  print("| model | params | state MB | step s | save() s (first) | save() s "
        "| save / step | write s (idle) | step s during a write |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['name']} | {r['params'] / 1e6:.1f}M | {r['mb']:.0f} | {r['step']:.3f} "
          f"| {r['first_save']:.3f} | {r['save']:.3f} | {r['save'] / r['step']:.1%} "
          f"| {r['write']:.3f} | {r['during']:.3f} |")


if __name__ == "__main__":
  app.run(main)
