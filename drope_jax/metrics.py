"""Where metrics go: a line on stdout, `metrics.jsonl`, TensorBoard event files, and
Weights & Biases when `metrics.wandb` is set (wandb is imported only then; the run id
comes from the workdir, so a resumed run continues the same W&B run).

Only process 0 writes, and only from the first logged step: a run refused before it
(a config that does not fit the checkpoint) leaves the workdir as it was. After a
resume, steps between the last checkpoint and the interruption are logged again:
readers of metrics.jsonl keep the last line per step.
"""

import hashlib
import json
import sys
import time

import jax
import tensorboardX
from etils import epath

STDOUT_KEYS = ("loss", "eval_loss", "lr", "grad_norm", "tokens_per_sec", "mfu")


class MetricsWriter:

  def __init__(self, workdir: str, *, total_steps: int, run_config=None,
               run_name: str | None = None):
    """Writes into `workdir`; `run_config` (the full config) turns W&B on when its
    metrics.wandb is set; `run_name` (default: the workdir) names the W&B run."""
    self.enabled = jax.process_index() == 0
    self.workdir = epath.Path(workdir)
    self.total_steps = total_steps
    self._run_config = run_config
    self._run_name = run_name or str(workdir)
    self._started = time.time()
    self._first_step = None
    self._jsonl = self._tb = self._wandb = None

  def _open(self):
    self.workdir.mkdir(parents=True, exist_ok=True)
    self._jsonl = (self.workdir / "metrics.jsonl").open("a")
    self._tb = tensorboardX.SummaryWriter(str(self.workdir / "tensorboard"))
    if self._run_config is not None and self._run_config.metrics.wandb:
      import wandb  # pylint: disable=g-import-not-at-top  (optional dependency)
      m = self._run_config.metrics
      self._wandb = wandb.init(
          project=m.wandb_project, entity=m.wandb_entity, dir=str(self.workdir),
          name=self._run_name.rstrip("/").split("/")[-1], resume="allow",
          id=hashlib.sha256(self._run_name.encode()).hexdigest()[:16],
          config=self._run_config.to_dict())

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    if self._jsonl is None:
      self._open()
    self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
    self._jsonl.flush()
    for key, value in metrics.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        self._tb.add_scalar(key, value, step)
    self._tb.flush()
    if self._wandb is not None:
      self._wandb.log({k: v for k, v in metrics.items() if not isinstance(v, str)},
                      step=step)
    print(self._line(step, metrics), flush=True)

  def _line(self, step: int, metrics: dict) -> str:
    if self._first_step is None:
      self._first_step, self._started = step, time.time()
    parts = [f"step {step:>6}/{self.total_steps}", f"[{metrics.get('phase', '')}]"]
    for key in STDOUT_KEYS + tuple(k for k in metrics if k.endswith("_accuracy")):
      if key in metrics:
        value = metrics[key]
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    done = step - self._first_step
    if done > 0:
      eta = (time.time() - self._started) / done * (self.total_steps - step)
      parts.append(f"eta {_duration(eta)}")
    return "  ".join(parts)

  def info(self, message: str):
    if self.enabled:
      print(message, file=sys.stdout, flush=True)

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
