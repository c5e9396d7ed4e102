"""`python -m drope_jax.train --config=configs/tiny.py[:variant] --workdir=DIR`.

Overrides: `--config.train.steps=40`, `--config.drope.drop_at_step=30`, ...
Running the same command on the same workdir resumes from its latest checkpoint.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from drope_jax import checkpoint
from drope_jax import config as config_lib
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
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it touches at INFO.
  distributed.initialize()
  # Imported after distributed.initialize(): jax must not touch devices before it.
  from drope_jax import trainer  # pylint: disable=g-import-not-at-top
  try:
    trainer.Trainer(_CONFIG.value, _WORKDIR.value).run()
  except (config_lib.ConfigError, FileNotFoundError, checkpoint.RestoreError,
          trainer.NonFiniteLossError) as e:
    _exit_with(str(e))


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with an unknown `--config.x.y` reported as one line, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, ValueError) as e:  # ValueError: a config file refusing its arg.
    lines = [line for line in str(e).splitlines() if line.strip()]
    # ml_collections embeds the config file's traceback: keep what it says, not where.
    _exit_with(lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}")
  except (AttributeError, KeyError) as e:
    key = str(e).strip("\"'")
    bad = [a.split("=")[0] for a in argv if a.startswith("--config.") and key in a]
    _exit_with(f"{bad[0] if bad else key}: no such config key; every key and its "
               "default is listed in drope_jax/config.py")


def _exit_with(message: str):
  print(f"error: {message}", file=sys.stderr)
  if distributed.is_multiprocess():
    # sys.exit would wait in jax's shutdown barrier for peers that may never arrive.
    sys.stderr.flush()
    os._exit(2)
  sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
