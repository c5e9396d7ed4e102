r"""Data pipeline throughput: tokens/s out of `make_iterator`, by worker count.

  python -m benchmarks.data_throughput [--source=stdlib] [--seq_len=256] \
      [--batch_size=16] [--workers=0,2] [--packing=concat,first_fit]

Reads the stdlib corpus by default (tokenized on the fly, byte tokenizer).
Start-up (first batch: building sources, spawning workers) is timed apart from
the steady state. Below the table: the tokens/s the tiny model's train step consumes
on the same machine, the rate the pipeline has to keep up with.
"""

import time

from absl import app
from absl import flags

from drope_jax import config as config_lib
from drope_jax.data import pipeline

_SOURCE = flags.DEFINE_string("source", "stdlib", "data.source")
_PATHS = flags.DEFINE_string("paths", None, "data.paths (for shards).")
_TOKENIZER = flags.DEFINE_string("tokenizer", "byte", "data.tokenizer")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "Tokens per row.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Rows per batch.")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "Worker counts to time.")
_PACKING = flags.DEFINE_list("packing", ["concat", "first_fit"], "Packings.")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "Steady-state time per setting.")
_MODEL_STEPS = flags.DEFINE_integer(
    "model_steps", 10, "Timed steps of the tiny model (configs/tiny.py at this batch "
    "and seq_len), whose consumption rate is printed below the table; 0: skip.")


def measure(data_config, seq_len: int, batch_size: int) -> tuple[float, float, float]:
  """(start-up seconds, tokens/s, share of target positions with weight 1)."""
  start = time.perf_counter()
  iterator = pipeline.make_iterator(data_config, seq_len=seq_len,
                                    batch_size=batch_size, seed=0)
  next(iterator)
  startup = time.perf_counter() - start
  batches, weighted = 0, 0.0
  start = time.perf_counter()
  while time.perf_counter() - start < _SECONDS.value:
    batch = next(iterator)
    weighted += float(batch["weights"].mean())
    batches += 1
  elapsed = time.perf_counter() - start
  iterator.close()
  return startup, batches * batch_size * seq_len / elapsed, weighted / batches


def main(argv):
  del argv
  data_config = config_lib.base_config().data
  data_config.source = _SOURCE.value
  data_config.paths = _PATHS.value
  data_config.tokenizer = _TOKENIZER.value
  print(f"source={_SOURCE.value} tokenizer={_TOKENIZER.value} "
        f"seq_len={_SEQ_LEN.value} batch_size={_BATCH_SIZE.value}")
  print(f"| packing   | workers | start-up s | tokens/s   | weighted |")
  print(f"|-----------|--------:|-----------:|-----------:|---------:|")
  for packing in _PACKING.value:
    for workers in map(int, _WORKERS.value):
      data_config.packing = packing
      data_config.num_workers = workers
      startup, rate, fill = measure(data_config, _SEQ_LEN.value,
                                    _BATCH_SIZE.value)
      print(f"| {packing:9} | {workers:7d} | {startup:10.2f} | {rate:10,.0f} "
            f"| {fill:8.1%} |", flush=True)

  if _MODEL_STEPS.value:
    print(f"tiny model train step consumes {_tiny_model_tokens_per_sec():,.0f} tokens/s")


def _tiny_model_tokens_per_sec() -> float:
  # Imported here: the table above should not wait for JAX to start.
  from benchmarks import train_throughput  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.train.seq_len, config.train.batch_size = _SEQ_LEN.value, _BATCH_SIZE.value
  seconds = train_throughput.drope_jax_seconds_per_step(config, warmup=2,
                                                        steps=_MODEL_STEPS.value)
  return _SEQ_LEN.value * _BATCH_SIZE.value / seconds


if __name__ == "__main__":
  app.run(main)
