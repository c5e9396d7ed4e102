"""One orbax CheckpointManager per run: train state, data iterator and metadata together.

Saves are asynchronous (the step loop does not wait for the write). Orbax writes each
step to a temporary directory and renames it when complete, so a step directory that a
killed process left half-written is never listed as a checkpoint. A checkpoint that is
listed but fails to restore is skipped with a warning and the one before it is used.
"""

import pathlib
import subprocess
from typing import Any

import grain
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

STATE, DATA_ITER, META = "state", "data_iter", "meta"


def code_version() -> str:
  """The git commit of the code that wrote a checkpoint, when it is known."""
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True,
                          cwd=pathlib.Path(__file__).parent).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def _preservation(ckpt_config, keep_steps: tuple[int, ...]):
  policies = [ocp.checkpoint_managers.LatestN(n=ckpt_config.max_to_keep)]
  if ckpt_config.keep_period:
    policies.append(ocp.checkpoint_managers.EveryNSteps(ckpt_config.keep_period))
  if keep_steps:
    policies.append(ocp.checkpoint_managers.CustomSteps(keep_steps))
  return ocp.checkpoint_managers.AnyPreservationPolicy(policies)


class Checkpointer:
  """Saves and restores (state, data iterator, metadata) under `directory`."""

  def __init__(self, directory: str, ckpt_config, *, keep_steps: tuple[int, ...] = (),
               read_only: bool = False):
    self.directory = epath.Path(directory)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=_preservation(ckpt_config, keep_steps),
        enable_async_checkpointing=bool(ckpt_config.async_save),
        create=not read_only,
        read_only=read_only,
    )
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={STATE: ocp.StandardCheckpointHandler(),
                       DATA_ITER: grain.checkpoint.CheckpointHandler(),
                       META: ocp.JsonCheckpointHandler()})

  def save(self, step: int, state, data_iter, meta: dict[str, Any]) -> bool:
    items = {STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
    if data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps(read=True))

  def read_meta(self, step: int) -> dict[str, Any]:
    restored = self.manager.restore(step, args=ocp.args.Composite(
        **{META: ocp.args.JsonRestore()}))
    return restored[META]

  def restore(self, step: int, abstract_state, data_iter=None):
    """Restores onto `abstract_state`'s shardings (any mesh); returns (state, meta)."""
    items = {STATE: ocp.args.StandardRestore(abstract_state),
             META: ocp.args.JsonRestore()}
    if data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored[STATE], restored[META]

  def restore_latest(self, abstract_state, data_iter=None, *, at_most: int | None = None):
    """The newest checkpoint that restores; (None, None, None) when there is none."""
    for step in reversed(self.steps()):
      if at_most is not None and step > at_most:
        continue
      try:
        state, meta = self.restore(step, abstract_state, data_iter)
      except Exception as e:  # pylint: disable=broad-except
        # A corrupt checkpoint must not end a month-long run: fall back to the previous.
        logging.warning("checkpoint at step %d in %s could not be restored (%s: %s); "
                        "trying the previous one", step, self.directory,
                        type(e).__name__, e)
        continue
      return step, state, meta
    return None, None, None

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()

