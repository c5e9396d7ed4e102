"""A run's phases, decided once from its config: the one place where variants branch.

    plan = plan_lib.make(config)
    for phase in plan.phases:   # pretrain [0, drop) RoPE; recalibrate [drop, steps) NoPE
      ...

RoPE and NoPE runs have one phase ('pretrain'). A DroPE run has 'pretrain' (RoPE) until
`drope.drop_at_step`, then 'recalibrate': NoPE, its own warmup and decay, optionally
fresh AdamW moments, and optionally QK-norm gains added (`drope.qk_norm`, gains 1).
The trainer, the learning-rate schedule, `compile`, checkpoint metadata, resume checks
and evaluation read the phases; nothing else branches on `model.pos_emb` or a phase name.

Step `s` is the update that takes checkpoint `s` to checkpoint `s + 1`: update `s` runs
in `plan.at(s)`, and checkpoint `s` holds the state `plan.of_checkpoint(s)` produced
(the drop-point checkpoint is pretrain's last state, saved before the drop).
"""

import dataclasses

from drope_jax.model import positional as positional_lib
from drope_jax.model.positional import Positional

PRETRAIN, RECALIBRATE = "pretrain", "recalibrate"
PHASE_NAMES = (PRETRAIN, RECALIBRATE)
POS_EMB = ("rope", "nope", "drope")   # model.pos_emb; drope = rope, then nope.
QK_NORMS = ("none", "q", "k", "qk", "head_qk")  # model.qk_norm (head_qk: Hugging Face's).
DROP_QK_NORMS = ("none", "q", "k", "qk")  # drope.qk_norm: gains added at the drop.


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Warmup to `peak`, then `kind` over `steps` steps (counted from the phase start)."""
  kind: str             # cosine | constant | wsd (optim.SCHEDULES).
  peak: float
  warmup: int
  steps: int
  min_ratio: float      # final lr / peak.
  decay_fraction: float  # wsd: share of `steps` spent decaying.


@dataclasses.dataclass(frozen=True)
class Phase:
  name: str                 # pretrain | recalibrate: logged, and kept in checkpoints.
  start: int                # first step of the phase.
  end: int                  # one past its last step.
  positional: Positional    # RoPE or NoPE, static in the step function.
  qk_norm: str              # none | q | k | qk: the model's QK-norm gains in this phase.
  schedule: Schedule
  reset_optimizer: bool     # fresh AdamW moments on entering the phase.

  def model_config(self, model_config):
    """`model_config` (a config's `model`) with this phase's QK-norm."""
    model_config = model_config.copy_and_resolve_references()
    with model_config.unlocked():
      model_config.qk_norm = self.qk_norm
    return model_config


@dataclasses.dataclass(frozen=True)
class Plan:
  phases: tuple[Phase, ...]

  def at(self, step: int) -> Phase:
    """The phase that runs update `step` (the last one for steps past the end)."""
    return next((p for p in self.phases if step < p.end), self.phases[-1])

  def of_checkpoint(self, step: int) -> Phase:
    """The phase whose update wrote checkpoint `step` (the first one for step 0)."""
    return self.at(max(step - 1, 0))

  @property
  def drop_steps(self) -> tuple[int, ...]:
    """Checkpoints between phases: the last state of one, the start of the next."""
    return tuple(p.start for p in self.phases[1:])


def merge_qk_norms(*qk_norms: str) -> str:
  """The QK-norm with the gains of all of `qk_norms`: ('q', 'k') -> 'qk'."""
  named = {n for n in qk_norms if n != "none"}
  if "head_qk" in named:  # per-head gains: nothing to add to them.
    if named != {"head_qk"}:
      raise ValueError(f"QK-norms {sorted(named)} cannot be combined with head_qk")
    return "head_qk"
  gains = "".join(c for c in "qk" if any(c in n.replace("none", "") for n in qk_norms))
  return gains or "none"


def drops(pos_emb: str) -> bool:
  """Whether a run with `model.pos_emb=pos_emb` drops RoPE partway (saved configs too)."""
  return pos_emb == "drope"


def make(config) -> Plan:
  """The phases of `config` (already validated)."""
  m, t, d = config.model, config.train, config.drope
  # The model's own RoPE scaling (model.rope_scaling, from Hugging Face) is kept.
  positional = lambda kind: positional_lib.of_model(m, kind)
  pretrain = Schedule(t.schedule, peak=t.lr, warmup=t.warmup_steps, steps=t.steps,
                      min_ratio=t.min_lr_ratio, decay_fraction=t.decay_fraction)
  if not drops(m.pos_emb):
    return Plan((Phase(PRETRAIN, 0, t.steps, positional(m.pos_emb), m.qk_norm, pretrain,
                       reset_optimizer=False),))
  drop = d.drop_at_step
  # Pretraining's schedule spans the whole run; the drop cuts it short.
  recalibrate = Schedule(d.schedule, peak=d.lr, warmup=d.warmup_steps,
                         steps=t.steps - drop, min_ratio=t.min_lr_ratio,
                         decay_fraction=t.decay_fraction)
  return Plan((
      Phase(PRETRAIN, 0, drop, positional("rope"), m.qk_norm, pretrain,
            reset_optimizer=False),
      # Checkpoints written before drope.qk_norm existed lack it: no gains added.
      Phase(RECALIBRATE, drop, t.steps, positional("nope"),
            merge_qk_norms(m.qk_norm, d.get("qk_norm", "none")), recalibrate,
            reset_optimizer=bool(d.reset_optimizer)),
  ))
