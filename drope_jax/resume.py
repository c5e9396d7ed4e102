"""Where a run's state comes from when it is not initialised: its own checkpoint
(checked to be one this config can continue) or another run's (checkpoint.init_from).
"""

from typing import Any

import jax
from etils import epath

from drope_jax import checkpoint
from drope_jax import config as config_lib
from drope_jax import plan as plan_lib

# Model keys that decide the parameter tree; a checkpoint only fits the same values.
# (qk_norm may be added by init_from: new gains start at 1.)
ARCHITECTURE_KEYS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads",
                     "head_dim", "d_ff", "tie_embeddings", "qk_norm", "attention_bias")
_WHOLE_PROJECTION_QK_NORMS = plan_lib.DROP_QK_NORMS


def architecture_mismatch(saved: dict, model_config, *, new_qk_norm_ok: bool) -> list[str]:
  """`model.KEY is A there and B here` for each architecture key that differs."""
  diffs = []
  for key in ARCHITECTURE_KEYS:
    there, here = saved.get(key), model_config.get(key)
    if key == "attention_bias":  # older runs lack the key: no biases.
      there, here = bool(there), bool(here)
    if (key == "qk_norm" and new_qk_norm_ok and there in _WHOLE_PROJECTION_QK_NORMS
        and here in _WHOLE_PROJECTION_QK_NORMS
        and set(there.replace("none", "")) <= set(here.replace("none", ""))):
      continue
    if there != here:
      diffs.append(f"model.{key} is {there!r} there and {here!r} here")
  return diffs


def changed_keys(saved: dict, current: dict, prefix: str = "") -> list[str]:
  """`key: old -> new` for each config value that differs (JSON made tuples lists)."""
  changed = []
  for key in sorted(set(saved) | set(current)):
    a, b = saved.get(key), current.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      changed += changed_keys(a, b, f"{prefix}{key}.")
    elif (list(a) if isinstance(a, (list, tuple)) else a) != (
        list(b) if isinstance(b, (list, tuple)) else b):
      changed.append(f"{prefix}{key}: {a!r} -> {b!r}")
  return changed


def check_resume(config, plan: plan_lib.Plan, where: str, step: int,
                 meta: dict) -> list[str]:
  """Refuses checkpoint `where` (of `step`, with `meta`) when `config` cannot continue
  it; returns the config keys that changed since it was written."""
  saved = meta["config"]
  if step > config.train.steps:
    raise config_lib.ConfigError(
        f"{where} lies beyond train.steps={config.train.steps} (the run that wrote it "
        f"had {saved['train']['steps']}): resume with --config.train.steps >= {step}, "
        "or use a new --workdir")
  drop_there, drop_here = saved["drope"]["drop_at_step"], config.drope.drop_at_step
  # Only between two DroPE runs: a RoPE run's checkpoint may seed a DroPE run.
  if (plan_lib.drops(saved["model"]["pos_emb"])
      and plan_lib.drops(config.model.pos_emb) and drop_there != drop_here):
    raise config_lib.ConfigError(
        f"{where} belongs to a run that drops RoPE at step "
        f"{drop_there}, not {drop_here}: its schedules and kept checkpoints follow "
        f"that split. Resume with --config.drope.drop_at_step={drop_there}, or use a "
        "new --workdir (with checkpoint.init_from to start from its weights)")
  diffs = architecture_mismatch(saved["model"], config.model, new_qk_norm_ok=False)
  if diffs:
    raise config_lib.ConfigError(
        f"{where} was written by another architecture: "
        f"{'; '.join(diffs)}. Resume with its config, or use a new --workdir "
        "(with --config.checkpoint.init_from to start from its weights)")
  phase = plan.of_checkpoint(step)
  # Checkpoints written before the plan kept its QK-norm have the config's.
  there = (meta["phase"], meta.get("qk_norm", saved["model"]["qk_norm"]))
  if there != (phase.name, phase.qk_norm):
    raise config_lib.ConfigError(
        f"{where} was written in phase {there[0]!r} with "
        f"qk_norm {there[1]!r}; this config puts step {step} in {phase.name!r} with "
        f"qk_norm {phase.qk_norm!r} (model.pos_emb={config.model.pos_emb}, "
        f"drope.drop_at_step={config.drope.drop_at_step}, drope.qk_norm="
        f"{config.drope.qk_norm}). Resume with the run's own model.pos_emb and "
        "drope keys")
  return changed_keys(saved, config.to_dict())


def init_source(config) -> tuple[epath.Path, int]:
  """checkpoint.init_from's checkpoint directory and step, checked to exist, to hold
  this architecture and what is asked of it (reading only its metadata)."""
  c = config.checkpoint
  directory = epath.Path(c.init_from)
  if (directory / "checkpoints").exists():
    directory = directory / "checkpoints"
  source = checkpoint.Checkpointer(str(directory), c, read_only=True)
  try:
    steps = source.steps()
    if not steps:
      raise FileNotFoundError(f"checkpoint.init_from={c.init_from}: no checkpoints "
                              "found (give a run's workdir or its checkpoints/ directory)")
    step = c.init_step if c.init_step is not None else steps[-1]
    if step not in steps:
      raise FileNotFoundError(f"checkpoint.init_step={step} is not in {directory} "
                              f"(available: {steps})")
    meta = source.read_meta(step)
  finally:
    source.close()
  if c.init_optimizer and meta.get(checkpoint.FRESH_OPTIMIZER):
    raise config_lib.ConfigError(
        f"checkpoint.init_from={c.init_from} (step {step}) holds no optimizer state "
        "(its optimizer starts fresh, as an imported model's does): drop "
        "checkpoint.init_optimizer")
  diffs = architecture_mismatch(meta["config"]["model"], config.model,
                                new_qk_norm_ok=True)
  if diffs:
    raise config_lib.ConfigError(
        f"checkpoint.init_from={c.init_from} (step {step}) is another architecture: "
        f"{'; '.join(diffs)}. Set these model keys as in that run (only "
        "model.qk_norm may add gains)")
  return directory, step


def init_from(config, state, abstract_state) -> tuple[Any, str]:
  """`state` with another run's params (and optimizer state if asked) from
  checkpoint.init_from, restored onto `abstract_state`; and a line saying what it took.

  The step, schedule and data stream are this run's own (they start at 0). Params
  this model has and the source lacks (QK-norm gains added for recalibration) keep
  their initial values (gains 1), and their AdamW moments start at zero.
  """
  c = config.checkpoint
  directory, step = init_source(config)
  source = checkpoint.Checkpointer(str(directory), c, read_only=True)
  parts = ("params", "opt_state") if c.init_optimizer else ("params",)
  try:
    restored = source.restore_parts(step, abstract_state, parts)
  except ValueError as e:
    raise config_lib.ConfigError(
        f"checkpoint.init_from={c.init_from} (step {step}): {e}"
        + (". Its optimizer differs: drop checkpoint.init_optimizer"
           if c.init_optimizer else "")) from e
  finally:
    source.close()
  fresh = []

  def take(path, value):
    key = checkpoint.path_key(path)
    if key[0] in parts and key not in restored:
      fresh.append("/".join(key))
    return restored.get(key, value)

  state = jax.tree_util.tree_map_with_path(take, state)
  return state, (f"initialised from {directory}/{step} ({' and '.join(parts)}"
                 + (f"; {len(fresh)} arrays new here, e.g. {fresh[0]}" if fresh
                    else "") + ")")
