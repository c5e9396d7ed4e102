"""Weights & Biases beside TensorBoard: an optional install, off unless asked (not even
imported), offline here."""

import hashlib
import subprocess
import sys

import pytest

from drope_jax import config as config_lib
from drope_jax import metrics


def test_wandb_is_not_imported_unless_enabled(tmp_path):
  code = ("import sys; from drope_jax import config, metrics; "
          "w = metrics.MetricsWriter(sys.argv[1], total_steps=2, "
          "run_config=config.base_config()); w.write(0, {'loss': 1.0}); w.close(); "
          "assert 'wandb' not in sys.modules")
  subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)


def test_wandb_logs_every_step_offline(tmp_path, monkeypatch):
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  config = config_lib.base_config()
  config.metrics.wandb = True
  writer = metrics.MetricsWriter(str(tmp_path), total_steps=3, run_config=config,
                                 run_name=str(tmp_path / "my-run"))
  for step in range(3):
    writer.write(step, {"phase": "pretrain", "loss": 3.0 - step})
  writer.close()
  # The run id comes from the workdir: a resumed run logs into the same W&B run.
  run_id = hashlib.sha256(str(tmp_path / "my-run").encode()).hexdigest()[:16]
  (run,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
  (log,) = run.glob(f"run-{run_id}.wandb")
  assert log.stat().st_size > 0
  assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 3


def test_wandb_not_installed_is_one_message_naming_the_optional_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError.
  with pytest.raises(metrics.WandbError, match="requirements-wandb.txt"):
    metrics.check_wandb()
