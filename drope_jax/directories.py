"""Whether a directory a command will write to can be written, checked before anything
is: a local one is (or can become) a writable directory; a gs:// one's bucket answers."""

import os
import pathlib

from drope_jax import config as config_lib
from drope_jax import gcs


def check_writable(path: str, label: str) -> None:
  """Raises ConfigError, starting with `label` (the flag or key that named `path`)."""
  if gcs.is_remote(path):
    gcs.check_reachable(path)
    return
  absolute = pathlib.Path(path).absolute()
  existing = next(p for p in (absolute, *absolute.parents) if p.exists())
  if not existing.is_dir():
    raise config_lib.ConfigError(
        f"{label}: {existing} is a file, not a directory; give a directory")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise config_lib.ConfigError(
        f"{label}: {existing} is not writable by this user; give a directory you can "
        "write to")
