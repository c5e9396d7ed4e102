"""End to end through `python -m drope_jax.train`: loss, the drop, resume, bad configs."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SMALL = [
    "--config=configs/tiny.py",
    "--config.model.d_model=64", "--config.model.d_ff=128", "--config.model.n_layers=2",
    "--config.model.n_heads=2", "--config.model.n_kv_heads=1", "--config.model.head_dim=32",
    "--config.train.seq_len=64", "--config.train.batch_size=8", "--config.train.steps=24",
    "--config.train.warmup_steps=4", "--config.train.log_every=4",
    "--config.train.eval_every=8", "--config.train.eval_batches=1",
    "--config.drope.drop_at_step=16", "--config.drope.warmup_steps=2",
    "--config.checkpoint.every_steps=8",
]


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env.pop("XLA_FLAGS", None)  # one CPU device, like a user's laptop.
  return env


def train(workdir, *extra, check=True):
  cmd = [sys.executable, "-m", "drope_jax.train", f"--workdir={workdir}", *SMALL, *extra]
  result = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=600)
  if check and result.returncode:
    raise AssertionError(f"train failed ({result.returncode}):\n{result.stderr[-3000:]}")
  return result


def read_metrics(workdir) -> dict[int, dict]:
  """The last record per step (a resumed run may log a step again)."""
  records = {}
  for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    records.setdefault(record["step"], {}).update(record)
  return records


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  # Relative, as in the README's command: orbax itself only takes absolute paths.
  result = train(os.path.relpath(workdir, REPO))
  return workdir, result


def test_loss_falls_and_rope_is_dropped_at_drop_at_step(finished_run):
  workdir, _ = finished_run
  metrics = read_metrics(workdir)
  losses = [m["loss"] for _, m in sorted(metrics.items()) if "loss" in m]
  assert losses[-1] < losses[0] - 1.0
  phases = {step: m["phase"] for step, m in metrics.items() if "loss" in m}
  assert all(p == "pretrain" for s, p in phases.items() if s < 16)
  assert all(p == "recalibrate" for s, p in phases.items() if s >= 16)
  assert phases[16] == "recalibrate"
  assert "eval_loss" in metrics[23] and "eval_loss" in metrics[7]
  for m in metrics.values():
    assert {"step", "loss", "lr", "phase", "tokens_seen", "tokens_per_sec"} <= m.keys()
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert 16 in steps and 24 in steps
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_the_same_command_resumes_instead_of_restarting(finished_run):
  workdir, _ = finished_run
  lines_before = (workdir / "metrics.jsonl").read_text().count("\n")
  again = train(workdir)
  assert "resumed from" in again.stdout
  assert (workdir / "metrics.jsonl").read_text().count("\n") == lines_before


def test_sigterm_saves_and_a_restart_matches_the_uninterrupted_run(finished_run, tmp_path):
  uninterrupted, _ = finished_run
  workdir = tmp_path / "preempted"
  cmd = [sys.executable, "-m", "drope_jax.train", f"--workdir={workdir}", *SMALL]
  proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  metrics = workdir / "metrics.jsonl"
  while time.time() < deadline:  # stop it somewhere after the first few steps.
    if metrics.exists() and '"step": 4' in metrics.read_text():
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  assert "preempted: saved step" in stdout
  train(workdir)
  resumed, reference = _final_params(workdir), _final_params(uninterrupted)
  assert jax.tree.structure(resumed) == jax.tree.structure(reference)
  jax.tree.map(np.testing.assert_array_equal, resumed, reference)
  a, b = read_metrics(workdir), read_metrics(uninterrupted)
  assert [a[s]["loss"] for s in sorted(a) if "loss" in a[s]] == \
         [b[s]["loss"] for s in sorted(b) if "loss" in b[s]]


def _final_params(workdir):
  """Reads the step-24 parameters with orbax, as numpy arrays."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(workdir) / "checkpoints" / "24" / "state"
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(path)
  return restored["params"]


@pytest.mark.parametrize("override, message", [
    ("--config.model.pos_emb=foo", "model.pos_emb"),
    ("--config.model.not_a_key=1", "not_a_key"),
    ("--config.train.steps=many", "train.steps"),
    ("--config.drope.drop_at_step=99", "drop_at_step"),
    # Known before compiling: refused before init compiles (and fills the cache).
    ("--config.checkpoint.init_from=/nonexistent/run", "no checkpoints found"),
    ("--config.profile.steps=20-30", "profile.steps"),
])
def test_config_errors_exit_nonzero_with_a_clear_message(tmp_path, override, message):
  workdir = tmp_path / "bad"
  result = train(workdir, override, check=False)
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr
  assert not workdir.exists()  # no compilation_cache/ either.


@pytest.mark.parametrize("existing", [False, True])
def test_wandb_without_an_api_key_is_refused_before_compiling(tmp_path, existing):
  workdir = tmp_path / "run"
  if existing:
    workdir.mkdir()
    (workdir / "notes.txt").write_text("mine")
  home = tmp_path / "home"  # no ~/.netrc, no wandb settings.
  env = {k: v for k, v in _env().items() if not k.startswith("WANDB_") and k != "NETRC"}
  cmd = [sys.executable, "-m", "drope_jax.train", f"--workdir={workdir}", *SMALL,
         "--config.metrics.wandb=true"]
  result = subprocess.run(cmd, cwd=REPO, env=dict(env, HOME=str(home)),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "no W&B API key" in errors[0], result.stderr[-3000:]
  assert "wandb login" in errors[0] and "WANDB_MODE=offline" in errors[0]
  assert sorted(p.name for p in tmp_path.rglob("*")) == (
      ["notes.txt", "run"] if existing else [])


def test_profile_steps_write_a_trace_of_those_steps(tmp_path):
  result = train(tmp_path / "run", "--config.train.steps=4", "--config.drope.drop_at_step=2",
                 "--config.train.warmup_steps=1", "--config.drope.warmup_steps=1",
                 "--config.profile.steps=1-2")
  traces = list((tmp_path / "run" / "profile").glob("plugins/profile/*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  assert "step 2: trace of profile.steps written to" in result.stdout + result.stderr


@pytest.mark.parametrize("override, message", [
    ("--config.train.steps=20", "/24 lies beyond train.steps=20"),
    ("--config.drope.drop_at_step=12", "drops RoPE at step 16, not 12"),
])
def test_a_resume_the_checkpoint_cannot_continue_is_refused_untouched(
    finished_run, override, message):
  workdir, _ = finished_run
  before = {str(p): p.stat().st_size for p in workdir.rglob("*")}
  result = train(workdir, override, check=False)
  assert result.returncode == 2, result.stderr[-3000:]
  assert message in result.stderr and "Traceback" not in result.stderr
  assert {str(p): p.stat().st_size for p in workdir.rglob("*")} == before


def test_an_odd_head_dim_trains_without_rope_and_is_refused_with_it(tmp_path):
  odd = ["--config.model.head_dim=33", "--config.train.steps=1",
         "--config.train.warmup_steps=0"]
  train(tmp_path / "nope", *odd, "--config.model.pos_emb=nope")
  assert read_metrics(tmp_path / "nope")[0]["loss"] > 0
  result = train(tmp_path / "rope", *odd, "--config.model.pos_emb=rope", check=False)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "model.head_dim=33 must be even with model.pos_emb=rope" in result.stderr
  assert not (tmp_path / "rope" / "checkpoints").exists()


def test_every_step_of_a_resumed_run_reports_a_possible_mfu(tmp_path):
  # An evaluation (or save) that finished a step before its window opened left the
  # step's time out: the last step reported mfu 30-50.
  short = ["--config.model.pos_emb=rope", "--config.train.warmup_steps=0",
           "--config.train.log_every=1"]
  train(tmp_path, *short, "--config.train.steps=2")
  train(tmp_path, *short, "--config.train.steps=4")
  records = read_metrics(tmp_path)
  assert sorted(records) == [0, 1, 2, 3]
  assert all(0 < r["mfu"] < 1 for r in records.values()), records



def _truncate_a_data_file(checkpoints):
  data = max((checkpoints / "24" / "state" / "ocdbt.process_0" / "d").iterdir(),
             key=lambda f: f.stat().st_size)
  data.write_bytes(data.read_bytes()[:1000])


def _half_written(step, parts):
  """Damage: a step directory holding only `parts` of the finished step 24."""
  def damage(checkpoints):
    source = checkpoints.parent / "finished_24"
    shutil.copytree(checkpoints / "24", source)
    if step == 24:
      shutil.rmtree(checkpoints / "24")
    for part in parts:
      (checkpoints / str(step) / part).parent.mkdir(parents=True, exist_ok=True)
      copy = shutil.copytree if (source / part).is_dir() else shutil.copyfile
      copy(source / part, checkpoints / str(step) / part)
  return damage


@pytest.mark.parametrize("damage, step, what, resumes_from", [
    (_truncate_a_data_file, 24, "is unreadable", 16),
    # Past train.steps: found incomplete before its step is compared with the config.
    (_half_written(32, ["_CHECKPOINT_METADATA", "meta", "state/_METADATA"]), 32,
     "is incomplete (a save that did not finish: no state/manifest.ocdbt)", 24),
    # Complete-looking but without the arrays: a restore that fails inside orbax.
    (_half_written(24, ["_CHECKPOINT_METADATA", "meta", "data_iter", "state/_METADATA",
                        "state/manifest.ocdbt"]), 24, "is unreadable", 16),
])
def test_a_recovery_is_one_warning_line(finished_run, tmp_path, damage, step, what,
                                        resumes_from):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run[0], workdir)
  damage(workdir / "checkpoints")
  result = train(workdir)
  assert "Traceback" not in result.stderr and "Event loop" not in result.stderr, (
      result.stderr[-3000:])
  warnings = [line for line in result.stderr.splitlines() if re.match(r"W\d{4} ", line)]
  assert len(warnings) == 1, result.stderr[-3000:]
  assert f"checkpoints/{step} {what}" in warnings[0], warnings
  assert f"moved it to {step}.corrupt; resuming from step {resumes_from}" in warnings[0]
  assert (workdir / "checkpoints" / f"{step}.corrupt").is_dir()
