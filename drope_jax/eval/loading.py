"""A run's model for evaluation: config, weights and positional mode from its workdir.

    run = loading.load_run("runs/drope-tiny", step=None)      # latest checkpoint
    model = run.model(attention="chunked")                    # same weights, other kernel
    logits = model(tokens_BS, positional=run.positional())

The config comes from the checkpoint's metadata, so evaluation needs nothing but the
workdir; the run's plan says which phase wrote the checkpoint, so its positional mode
and QK-norm: a DroPE checkpoint taken before the drop is a RoPE model; after it, NoPE.
Only the parameters are read (no optimizer state).
"""

import dataclasses
import os

import jax
import ml_collections
import optax
from etils import epath
from flax import nnx

from drope_jax import checkpoint
from drope_jax import config as config_lib
from drope_jax import errors
from drope_jax import parallel
from drope_jax import plan as plan_lib
from drope_jax import train_step
from drope_jax.data import framing as framing_lib
from drope_jax.data import tokenizers
from drope_jax.model import positional as positional_lib
from drope_jax.model import transformer


class RunError(errors.BadInput, ValueError):
  """A workdir or step that cannot be evaluated; the message says why and what to do."""


@dataclasses.dataclass
class Run:
  """A restored checkpoint: everything evaluation needs to know about it."""
  name: str
  workdir: str
  step: int
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  params: nnx.State
  training_phase: plan_lib.Phase  # the phase that wrote the checkpoint.

  @property
  def phase(self) -> str:
    return self.training_phase.name

  @property
  def train_len(self) -> int:
    return int(self.config.train.seq_len)

  @property
  def model_config(self) -> transformer.ModelConfig:
    return transformer.ModelConfig.from_config(
        self.training_phase.model_config(self.config.model))

  def positional(self) -> positional_lib.Positional:
    """The positional mode the checkpoint was trained in."""
    return self.training_phase.positional

  def tokenizer(self) -> tokenizers.Tokenizer:
    return tokenizers.get_tokenizer(self.config.data.tokenizer)

  @property
  def framing(self) -> str:
    """How a text starts for this model (drope_jax/data/framing.py)."""
    return framing_lib.of_config(self.config)

  def graphdef(self, attention: str | None = None):
    """The model's static structure, optionally with another attention kernel."""
    cfg = self.model_config
    if attention:
      cfg = dataclasses.replace(cfg, attention=attention)
    with parallel.mesh_context(self.mesh):
      return nnx.graphdef(nnx.eval_shape(
          lambda: transformer.Transformer(cfg, rngs=nnx.Rngs(0))))

  def model(self, attention: str | None = None) -> transformer.Transformer:
    return nnx.merge(self.graphdef(attention), self.params)


def checkpoint_dir(workdir: str) -> epath.Path:
  return epath.Path(workdir) / "checkpoints"


def available_steps(workdir: str) -> list[int]:
  """Checkpointed steps of a run; RunError when there are none."""
  directory = checkpoint_dir(workdir)
  if not directory.exists():
    raise RunError(f"{workdir} has no checkpoints/ directory: is it a run's workdir? "
                   "Train one with `python -m drope_jax.train --workdir=...`.")
  ckpt = _checkpointer(directory)
  steps = ckpt.steps()
  ckpt.close()
  if not steps:
    raise RunError(f"{directory} holds no finished checkpoint yet")
  return steps


def load_run(workdir: str, step: int | None = None, *, devices=None) -> Run:
  """Restores `step` (default: the latest) of the run in `workdir`."""
  steps = available_steps(workdir)
  if step is None:
    step = steps[-1]
  if step not in steps:
    raise RunError(f"step {step} is not checkpointed in {checkpoint_dir(workdir)} "
                   f"(available: {', '.join(map(str, steps))})")
  ckpt = _checkpointer(checkpoint_dir(workdir))
  try:
    config = ml_collections.ConfigDict(ckpt.read_meta(step)["config"])
    plan = plan_lib.make(config)
    phase = plan.of_checkpoint(step)
    mesh = _mesh(config, devices)
    # No optimizer: its state stays on disk.
    built, _ = train_step.build(config, mesh, optax.identity(),
                                phase.model_config(config.model))
    restored = ckpt.restore_parts(step, built.abstract_state, ["params"])
  except checkpoint.CorruptCheckpointError as e:
    raise RunError(f"{e}; evaluate another --step (available: "
                   f"{', '.join(map(str, steps))})") from e
  finally:
    ckpt.close()
  params = jax.tree_util.tree_map_with_path(
      lambda path, _: restored[("params", *checkpoint.path_key(path))],
      built.abstract_state.params)
  name = os.path.basename(os.path.normpath(workdir))
  return Run(name=name, workdir=workdir, step=step, config=config, mesh=mesh,
             params=params, training_phase=phase)


def _checkpointer(directory) -> checkpoint.Checkpointer:
  options = config_lib.base_config().checkpoint
  return checkpoint.Checkpointer(str(directory), options, read_only=True)


def _mesh(config, devices) -> jax.sharding.Mesh:
  """The run's mesh on the devices at hand; all-data-parallel when it does not fit."""
  try:
    return parallel.make_mesh(config.mesh, devices)
  except parallel.MeshError:
    fallback = ml_collections.ConfigDict(dict(shape=(-1, 1, 1), dcn_shape=(1, 1, 1)))
    return parallel.make_mesh(fallback, devices)


def batch_multiple(mesh: jax.sharding.Mesh) -> int:
  """Rows of an evaluation batch must be a multiple of this (the batch-sharded axes)."""
  return parallel.shards("batch", mesh)
