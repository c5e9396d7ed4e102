"""Where metrics go: a line on stdout, `metrics.jsonl`, TensorBoard event files, and
Weights & Biases when `metrics.wandb` is set (wandb is imported only then; the run id
comes from the workdir, so a resumed run continues the same W&B run).

Only process 0 writes, and only from the first logged step: a run refused before it
(a config that does not fit the checkpoint) leaves the workdir as it was. W&B's
prerequisites (the package, an API key unless offline) are checked when the writer is
made, before the run compiles anything. After a
resume, steps between the last checkpoint and the interruption are logged again:
readers of metrics.jsonl keep the last line per step.
"""

import hashlib
import json
import sys
import time

import jax
from etils import epath

from drope_jax import errors

STDOUT_KEYS = ("loss", "eval_loss", "lr", "grad_norm", "tokens_per_sec", "mfu")


# W&B modes that keep the run on this machine: no API key needed.
_LOCAL_WANDB_MODES = ("offline", "dryrun", "disabled")
_WANDB_FIX = ("run `wandb login` (or set WANDB_API_KEY), or set WANDB_MODE=offline to "
              "keep the W&B run under WORKDIR/wandb/, or drop --config.metrics.wandb")


class WandbError(errors.BadInput, RuntimeError):
  """metrics.wandb is set and W&B cannot log from here."""


def check_wandb():
  """Raises WandbError unless wandb is installed and, outside offline or disabled mode
  (WANDB_MODE or wandb's settings files), an API key is configured: WANDB_API_KEY,
  ~/.netrc or wandb's settings, looked up as wandb.init will but without the network.
  Whether the server and the project answer is only known at wandb.init."""
  # pylint: disable=g-import-not-at-top  (optional dependency)
  try:
    import wandb
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth
  except ImportError as e:
    raise WandbError(
        f"--config.metrics.wandb=True needs the wandb package ({e}): pip install "
        "-r requirements-wandb.txt (an optional install), or drop "
        "--config.metrics.wandb") from e
  # pylint: enable=g-import-not-at-top
  try:
    settings = wandb_setup.singleton().settings
    if settings.mode in _LOCAL_WANDB_MODES:
      return
    auth = wbauth.authenticate_session(host=settings.base_url, source="drope_jax",
                                       prompt=False, update_session=False)
  except (ValueError, wandb.errors.Error) as e:  # a bad WANDB_MODE or API key format.
    raise WandbError(f"--config.metrics.wandb=True: W&B refuses its settings "
                     f"({' '.join(str(e).split())}); {_WANDB_FIX}") from e
  if auth is None:
    raise WandbError(f"--config.metrics.wandb=True: no W&B API key for "
                     f"{settings.base_url}; {_WANDB_FIX}")


def _tensorboardx():
  """tensorboardX, imported at the first logged step without torch: its writer imports
  torch where it is installed (4 s on a 2-core host) only to accept torch tensors, which
  no one passes here. A later `import torch` elsewhere is unaffected."""
  hide_torch = "torch" not in sys.modules
  if hide_torch:
    sys.modules["torch"] = None  # `import torch` raises ImportError, which it handles.
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  finally:
    if hide_torch:
      del sys.modules["torch"]
  return tensorboardX


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
    if self.enabled and run_config is not None and run_config.metrics.wandb:
      check_wandb()

  def _open(self):
    self.workdir.mkdir(parents=True, exist_ok=True)
    self._jsonl = (self.workdir / "metrics.jsonl").open("a")
    self._tb = _tensorboardx().SummaryWriter(str(self.workdir / "tensorboard"))
    if self._run_config is not None and self._run_config.metrics.wandb:
      import wandb  # pylint: disable=g-import-not-at-top  (optional dependency)
      m = self._run_config.metrics
      try:
        self._wandb = wandb.init(
            project=m.wandb_project, entity=m.wandb_entity, dir=str(self.workdir),
            name=self._run_name.rstrip("/").split("/")[-1], resume="allow",
            id=hashlib.sha256(self._run_name.encode()).hexdigest()[:16],
            config=self._run_config.to_dict())
      except wandb.errors.Error as e:  # the server, the key or the project said no.
        raise WandbError(
            f"the W&B run did not start ({' '.join(str(e).split())}): check the "
            f"network, the API key (`wandb login`) and metrics.wandb_project="
            f"{m.wandb_project}, metrics.wandb_entity={m.wandb_entity}; or set "
            "WANDB_MODE=offline and run again (it resumes)") from e

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
