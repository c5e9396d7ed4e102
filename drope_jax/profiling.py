"""Traces on demand: `--config.profile.steps=20-25` captures steps 20 to 25 (inclusive)
with jax.profiler into WORKDIR/profile, on every platform, for TensorBoard's profile
plugin (`tensorboard --logdir=WORKDIR/profile`) or XProf. Off by default.

A trace covers what the steps dispatch and run, in-run evaluations and saves that fall
between them included. A run resumed inside the window traces what is left of it.
"""

import re

import jax
from etils import epath

from drope_jax import config as config_lib


def window(spec: str | None, total_steps: int) -> tuple[int, int] | None:
  """profile.steps as (first, last) step, or None when off; ConfigError if malformed."""
  if spec is None or not spec.strip():
    return None
  match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", spec)
  if not match:
    raise config_lib.ConfigError(
        f"--config.profile.steps={spec!r} is not a step or a range: use e.g. 20-25 "
        "(steps 20 to 25) or 20")
  first = int(match[1])
  last = int(match[2]) if match[2] else first
  if not first <= last < total_steps:
    raise config_lib.ConfigError(
        f"--config.profile.steps={spec} must lie inside the run's steps 0 to "
        f"{total_steps - 1} with the first <= the last")
  return first, last


class StepTrace:
  """Starts jax.profiler's trace before the window's first step and stops it once its
  last step has finished."""

  def __init__(self, steps: tuple[int, int] | None, workdir: str):
    self._steps = steps
    self._directory = str(epath.Path(workdir) / "profile")
    self._active = False

  def before(self, step: int) -> None:
    if self._steps and not self._active and self._steps[0] <= step <= self._steps[1]:
      jax.profiler.start_trace(self._directory)
      self._active = True

  def after(self, step: int, outputs) -> str | None:
    """Ends the trace after the window's last step; returns the directory then."""
    if self._active and step >= self._steps[1]:
      jax.block_until_ready(outputs)  # the step's device work belongs in the trace.
      return self.stop()
    return None

  def stop(self) -> str | None:
    if not self._active:
      return None
    jax.profiler.stop_trace()
    self._active = False
    return self._directory
