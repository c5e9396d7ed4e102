"""`python -m drope_jax.train --config=configs/tiny.py[:variant] --workdir=DIR`.

Overrides: `--config.train.steps=40`, `--config.drope.drop_at_step=30`, ...
Running the same command on the same workdir resumes from its latest checkpoint.
Bad input (config, data, workdir, a checkpoint the config cannot continue) exits 2
with one line, having written nothing.
"""

import time

# Restart-to-first-step counts from here: before the slow imports (jax, orbax, grain).
_STARTED = time.time()

# pylint: disable=wrong-import-position
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from drope_jax import cli
from drope_jax import distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with a variant: configs/tiny.py:drope.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (local or gs://): checkpoints, metrics, evaluations.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it touches.
  distributed.initialize()
  # Imported after distributed.initialize(): jax must not touch devices before it.
  # pylint: disable=g-import-not-at-top
  from drope_jax import compilation_cache
  from drope_jax import trainer
  # pylint: enable=g-import-not-at-top
  config, workdir = _CONFIG.value, _WORKDIR.value
  compilation_cache.enable(config.compilation_cache_dir, workdir)
  trainer.Trainer(config, workdir, started=_STARTED).run()


if __name__ == "__main__":
  cli.run(main, config_flag="config")
