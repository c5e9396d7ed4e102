"""One orbax CheckpointManager per run: train state, data iterator and metadata together.

Saves are asynchronous: `save()` returns once the arrays are copied off the devices and
the write continues in the background. A step becomes a checkpoint only when its write
completes (locally orbax renames `<step>.orbax-checkpoint-tmp`; on gs:// it writes
`commit_success.txt` last), so a save that a killed process left half-done is never
listed. A listed checkpoint that fails to restore is skipped with a warning and the
one before it is used; the bad one is then moved aside to `<step>.corrupt`.

Storage can also corrupt a file silently (a flipped block still decodes). So the
metadata holds a fingerprint of every saved array, computed on device at save time,
and a restored state must match them: otherwise it did not restore.
"""

import os
import pathlib
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from drope_jax import errors
from drope_jax import gcs

STATE, DATA_ITER, META = "state", "data_iter", "meta"
FINGERPRINTS = "fingerprints"  # META key: {array path: [dtype, fingerprint]}.
# META key: how the layers' parameters are laid out. Every layer's arrays are stacked
# under `blocks` ([L, ...]); checkpoints without the key hold `blocks/<i>/...`.
LAYOUT, STACKED = "param_layout", "stacked_layers"
# META key, true when the state was saved without its optimizer state because that is
# the optimizer's fresh state (an imported model's step 0): whoever restores it makes
# the fresh state again, and the save neither holds nor writes it.
FRESH_OPTIMIZER = "fresh_optimizer"
# META key, false when no data iterator was saved (an import): a run resuming the state
# reads its data from the start. Checkpoints without the key have one.
DATA_ITER_SAVED = "data_iter_saved"


class RestoreError(errors.BadInput, RuntimeError):
  """No checkpoint of a run restores."""


class LayoutError(RestoreError):
  """A checkpoint written with a parameter layout this code no longer reads."""


def check_layout(meta: dict, where: str) -> None:
  if meta.get(LAYOUT) != STACKED:
    raise LayoutError(
        f"{where} holds one set of parameters per layer (blocks/0, blocks/1, ...), "
        "written by drope_jax before layers were stacked under one [n_layers, ...] "
        "axis (commit 02243cb and older): read it with that version (export it with "
        "`python -m drope_jax.hf export` there and import it here), or start a new "
        "--workdir")


class CorruptCheckpointError(RestoreError):
  """A checkpoint's arrays read back differently from what was saved."""


class IncompleteCheckpointError(RestoreError):
  """A step directory without every part a finished save writes (message: the parts)."""


# What every finished save holds (the data iterator is optional: an import has none).
_COMPLETE_PARTS = ("_CHECKPOINT_METADATA", f"{META}/metadata", f"{STATE}/_METADATA",
                   f"{STATE}/manifest.ocdbt")


def _why(error: Exception | None) -> str:
  """One line saying why a checkpoint did not restore."""
  if error is None:
    return "did not restore on another host"
  if isinstance(error, IncompleteCheckpointError):
    return f"is incomplete (a save that did not finish: no {error})"
  first = str(error).strip().splitlines()[0] if str(error).strip() else ""
  first = first.split(" See full TensorStore details")[0]  # a bound method's repr.
  first = first if len(first) <= 160 else first[:157] + "..."
  return f"is unreadable ({type(error).__name__}: {first})"


def _drop_closed_loop_noise():
  """A failed restore leaves tensorstore reads in flight; as they finish, their
  callbacks find orbax's event loop closed and each prints an `Event loop is closed`
  traceback (an unraisable exception). Only those are dropped, for the process."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop_noise", False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      previous(unraisable)

  hook.drops_closed_loop_noise = True
  sys.unraisablehook = hook


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


def path_key(path) -> tuple[str, ...]:
  """A pytree path as strings, the same for a live state and orbax's saved tree."""
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
               for k in path)


def fingerprints(tree) -> dict[str, list]:
  """{array path: [dtype, fingerprint]} for every array of `tree`, computed where the
  arrays live: one uint32 per array comes back to the host."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  sums = jax.device_get(_fingerprint_all([leaf for _, leaf in flat]))
  return {"/".join(path_key(p)): [str(leaf.dtype), int(fp)]
          for (p, leaf), fp in zip(flat, sums)}


# Elements summed at a time on CPU, where XLA does not fuse the weighting into the sum:
# one pass would need a temporary as large as the array (the whole state at a save).
FINGERPRINT_SLICE = 1 << 20


@jax.jit
def _fingerprint_all(leaves):
  return [_fingerprint(x) for x in leaves]


def _fingerprint(x):
  """sum_i bits_i * (2i + 1) mod 2**32 over the elements' bit patterns (i: flat index).

  Integer sums are exact in any order, so any mesh gives the same value; and since odd
  factors are invertible mod 2**32, any one changed element always changes it.
  """
  flat = x.reshape(-1)
  if jax.default_backend() != "cpu" or flat.size <= FINGERPRINT_SLICE:
    return _weighted_bit_sum(flat, 0)  # accelerators fuse it: no temporary.
  whole = flat.size // FINGERPRINT_SLICE

  def add_slice(i, total):
    start = i * FINGERPRINT_SLICE
    piece = jax.lax.dynamic_slice(flat, (start,), (FINGERPRINT_SLICE,))
    return total + _weighted_bit_sum(piece, start)

  total = jax.lax.fori_loop(0, whole, add_slice, jnp.uint32(0))
  return total + _weighted_bit_sum(flat[whole * FINGERPRINT_SLICE:],
                                   whole * FINGERPRINT_SLICE)


def _weighted_bit_sum(values, first_index):
  """The fingerprint's terms for flat elements first_index, first_index + 1, ..."""
  if values.dtype == jnp.bool_:
    bits = values.astype(jnp.uint32)
  else:
    unsigned = jnp.dtype(f"uint{jnp.dtype(values.dtype).itemsize * 8}")
    bits = jax.lax.bitcast_convert_type(values, unsigned).astype(jnp.uint32)
  # uint32 arithmetic wraps as the sum does: the index is taken mod 2**32.
  index = (jnp.asarray(first_index).astype(jnp.uint32)
           + jax.lax.iota(jnp.uint32, values.size))
  return jnp.sum(bits * (2 * index + 1), dtype=jnp.uint32)


def verify(tree, saved: dict[str, list] | None, where: str) -> None:
  """Raises CorruptCheckpointError when an array of `tree` differs from its fingerprint
  in `saved` (checkpoints without fingerprints, and arrays cast on restore, pass)."""
  if not saved:
    return
  bad = [key for key, (dtype, fp) in fingerprints(tree).items()
         if key in saved and saved[key][0] == dtype and saved[key][1] != fp]
  if bad:
    raise CorruptCheckpointError(
        f"{where}: {len(bad)} array(s) read back differently from what was saved "
        f"(e.g. {', '.join(bad[:3])}): its files are corrupt")


def _all_agree(ok: bool) -> bool:
  """True when every process says ok: hosts must fall back past a step together."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


class Checkpointer:
  """Saves and restores (state, data iterator, metadata) under `directory`."""

  def __init__(self, directory: str, ckpt_config, *, keep_steps: tuple[int, ...] = (),
               read_only: bool = False):
    # orbax refuses relative paths; a user's `--workdir=runs/x` is relative to the cwd.
    self.directory = epath.Path(directory if gcs.is_remote(directory)
                                else os.path.abspath(directory))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=_preservation(ckpt_config, keep_steps),
        enable_async_checkpointing=bool(ckpt_config.async_save),
        create=False,  # made at the first save: a refused run leaves no directory.
        read_only=read_only,
    )
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={STATE: ocp.StandardCheckpointHandler(),
                       DATA_ITER: grain.checkpoint.CheckpointHandler(),
                       META: ocp.JsonCheckpointHandler()})

  def save(self, step: int, state, data_iter, meta: dict[str, Any]) -> bool:
    """Saves a TrainState; one whose opt_state is None is saved as FRESH_OPTIMIZER."""
    self.directory.mkdir(parents=True, exist_ok=True)
    meta = {**meta, LAYOUT: STACKED, FINGERPRINTS: fingerprints(state),
            FRESH_OPTIMIZER: state.opt_state is None,
            DATA_ITER_SAVED: data_iter is not None}
    items = {STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
    if data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def steps(self) -> list[int]:
    self.manager.reload()
    return sorted(self.manager.all_steps())

  def read_meta(self, step: int) -> dict[str, Any]:
    """The metadata saved with `step` (without the fingerprints)."""
    meta = self._read_meta(step)
    meta.pop(FINGERPRINTS, None)
    return meta

  def _read_meta(self, step: int) -> dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(
        **{META: ocp.args.JsonRestore()}))[META]

  def restore(self, step: int, abstract_state, data_iter=None):
    """Restores onto `abstract_state`'s shardings (any mesh); returns (state, meta).

    A state saved with a fresh optimizer comes back with opt_state None: the caller
    knows its optimizer and makes the fresh state. One saved without a data iterator
    leaves `data_iter` at its start."""
    meta = self._read_meta(step)  # it says what the state holds.
    if meta.get(FRESH_OPTIMIZER):
      abstract_state = abstract_state.replace(opt_state=None)
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None and meta.get(DATA_ITER_SAVED, True):
      items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    verify(restored[STATE], meta.pop(FINGERPRINTS, None), f"{self.directory}/{step}")
    return restored[STATE], meta

  def restore_latest(self, abstract_state, data_iter=None, *,
                     check_meta: Callable[[int, dict], None] | None = None):
    """The newest checkpoint that restores: (step, state, meta), or (None,) * 3.

    `abstract_state` is the restore target, or a function of the step giving it (a
    run's phases may differ in structure).
    `check_meta(step, meta)` runs before the state is read; what it raises (say, a
    config that does not fit the checkpoint) propagates: that is not corruption.
    Checkpoints newer than the one used that failed are moved aside. When none
    restores, nothing is moved and RestoreError is raised: the cause is then more
    likely the code or the config than the files.
    """
    _drop_closed_loop_noise()  # before a restore can fail: its noise comes at once.
    failed = {}  # step -> why it did not restore.
    for step in reversed(self.steps()):
      meta, error = None, self._incompleteness(step)
      if error is None:
        try:
          meta = self.read_meta(step)
        except Exception as e:  # pylint: disable=broad-except
          error = e
      if _all_agree(error is None):
        check_layout(meta, f"{self.directory}/{step}")
        if check_meta is not None:
          check_meta(step, meta)
        try:
          target = abstract_state(step) if callable(abstract_state) else abstract_state
          state, _ = self.restore(step, target, data_iter)
        except Exception as e:  # pylint: disable=broad-except
          error = e
        if _all_agree(error is None):
          for bad, why in failed.items():
            aside = self._quarantine(bad)
            logging.warning("checkpoint %s/%d %s: moved it to %s; resuming from step %d",
                            self.directory, bad, why, aside.name, step)
          return step, state, meta
      failed[step] = _why(error)
    if failed:
      reasons = "; ".join(f"{step} {why}" for step, why in sorted(failed.items()))
      raise RestoreError(
          f"no checkpoint in {self.directory} restores ({reasons}); nothing was moved. "
          "If the code or the config changed since they were written, run the matching "
          "version, or start in a new workdir")
    return None, None, None

  def _incompleteness(self, step: int) -> "IncompleteCheckpointError | None":
    """What a save that never finished leaves out, found before reading (a restore
    that fails midway is slow and noisy)."""
    step_dir = self.directory / str(step)
    missing = [part for part in _COMPLETE_PARTS if not (step_dir / part).exists()]
    return IncompleteCheckpointError(", ".join(missing)) if missing else None

  def _quarantine(self, step: int) -> epath.Path:
    """Moves a checkpoint that did not restore to `<step>.corrupt`, keeping its files:
    it must neither vanish without a trace nor block that step from being saved again.
    Returns where it went.
    """
    aside = self.directory / f"{step}.corrupt"
    if aside.exists():
      aside = self.directory / f"{step}.corrupt-{int(time.time())}"
    if jax.process_index() == 0:
      (self.directory / str(step)).rename(aside)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"drope_quarantine_{step}")
    self.manager.reload()
    return aside

  def restore_parts(self, step: int, abstract_state, parts: Sequence[str]) -> dict:
    """Restores the top-level `parts` ('params', 'opt_state') of a saved state.

    Leaves are matched to `abstract_state` by path and restored onto its shardings.
    Returns {path_key: array}. A saved leaf with no counterpart of the same shape in
    `abstract_state` raises ValueError naming it; corrupt files raise
    CorruptCheckpointError.
    """
    meta = self._read_meta(step)
    path = self.directory / str(step) / STATE
    check_layout(meta, str(path.parent))
    targets = {path_key(p): leaf
               for p, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    with ocp.PyTreeCheckpointer() as checkpointer:
      saved = checkpointer.metadata(path).item_metadata.tree

      def target(p, saved_leaf):
        key = path_key(p)
        if key not in targets or tuple(targets[key].shape) != tuple(saved_leaf.shape):
          found = targets[key].shape if key in targets else "no such array"
          raise ValueError(f"{'/'.join(key)} {tuple(saved_leaf.shape)} in {path} does "
                           f"not fit this model ({found})")
        return targets[key]

      item = {part: jax.tree_util.tree_map_with_path(
          lambda p, leaf, part=part: target((part, *p), leaf), saved[part])
              for part in parts}
      restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
          item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
          partial_restore=True))
    verify(restored, meta.get(FINGERPRINTS), str(path))
    return {path_key(p): leaf
            for p, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]}

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()
