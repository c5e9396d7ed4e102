"""Where metrics go: a line on stdout, `metrics.jsonl`, and TensorBoard event files.

Only process 0 writes, and only from the first logged step: a run refused before it
(a config that does not fit the checkpoint) leaves the workdir as it was. After a
resume, steps between the last checkpoint and the interruption are logged again:
readers of metrics.jsonl keep the last line per step.
"""

import json
import sys
import time

import jax
import tensorboardX
from etils import epath

STDOUT_KEYS = ("loss", "eval_loss", "lr", "grad_norm", "tokens_per_sec", "mfu")


class MetricsWriter:

  def __init__(self, workdir: str, *, total_steps: int):
    self.enabled = jax.process_index() == 0
    self.workdir = epath.Path(workdir)
    self.total_steps = total_steps
    self._started = time.time()
    self._first_step = None
    self._jsonl = self._tb = None

  def _open(self):
    self.workdir.mkdir(parents=True, exist_ok=True)
    self._jsonl = (self.workdir / "metrics.jsonl").open("a")
    self._tb = tensorboardX.SummaryWriter(str(self.workdir / "tensorboard"))

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
    print(self._line(step, metrics), flush=True)

  def _line(self, step: int, metrics: dict) -> str:
    if self._first_step is None:
      self._first_step, self._started = step, time.time()
    parts = [f"step {step:>6}/{self.total_steps}", f"[{metrics.get('phase', '')}]"]
    for key in STDOUT_KEYS:
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


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
