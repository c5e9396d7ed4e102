"""Checkpoints end to end through `python -m drope_jax.train`: killed at any moment
(mid-save, at and after the drop), on gs://, preempted on two processes, NaNs,
init_from.

A reference run goes 24 steps uninterrupted (RoPE until 16, then NoPE), logging every
step and saving every 4; the other runs must end bitwise equal to it or fail cleanly.
"""

import json
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from benchmarks import reproduce
from tests import gcs_emulator
from tests.test_train import SMALL, read_metrics

REPO = pathlib.Path(__file__).resolve().parent.parent
STEPS, DROP = 24, 16


def _args(*overrides: str) -> list[str]:
  """SMALL with log_every=1, every_steps=4, and `overrides` replacing equal keys."""
  args = dict(a.split("=", 1) for a in SMALL)
  args.update(a.split("=", 1) for a in ("--config.train.log_every=1",
                                        "--config.checkpoint.every_steps=4", *overrides))
  return [f"{k}={v}" for k, v in args.items()]


def _env(**extra) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **extra)
  env.pop("XLA_FLAGS", None)  # one CPU device per process.
  return env


class _Runs:
  """`python -m drope_jax.train` on one workdir, again and again; outputs kept in `logs`."""

  def __init__(self, workdir, logs: pathlib.Path, env: dict[str, str] | None = None):
    self.workdir, self.logs, self.env = workdir, logs, env or _env()
    self.metrics = pathlib.Path(str(workdir)) / "metrics.jsonl"
    logs.mkdir(parents=True, exist_ok=True)
    self.count = 0

  def start(self, *overrides) -> subprocess.Popen:
    self.count += 1
    cmd = [sys.executable, "-m", "drope_jax.train", f"--workdir={self.workdir}",
           *_args(*overrides)]
    with self._log(self.count).open("w") as log:
      return subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log,
                              stderr=subprocess.STDOUT, text=True)

  def _log(self, n: int) -> pathlib.Path:
    return self.logs / f"run_{n}.log"

  def output(self) -> str:
    """What the latest run printed."""
    return self._log(self.count).read_text()

  def run(self, *overrides, check=True) -> tuple[int, str]:
    proc = self.start(*overrides)
    code = proc.wait(timeout=300)
    if check and code:
      raise AssertionError(f"train exited {code}:\n{self.output()[-3000:]}")
    return code, self.output()

  def kill_when(self, step: int, checkpoint: int, delay: float) -> str:
    """SIGKILLs a new run `delay` s after it logged `step` and `checkpoint` is complete;
    returns its output."""
    proc = self.start()
    done = pathlib.Path(str(self.workdir)) / "checkpoints" / str(checkpoint)
    _wait_until(lambda: f"step {step:>6}/" in self.output() and done.exists(), proc,
                f"step {step} and checkpoint {checkpoint}", poll=0.002)
    time.sleep(delay)
    proc.kill()
    proc.wait()
    return self.output()


def _wait_until(condition, proc, what: str, timeout=300, poll=0.05):
  deadline = time.time() + timeout
  while not condition():
    if proc.poll() is not None:
      raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}")
    if time.time() > deadline:
      proc.kill()
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(poll)


def _resumed_from(output: str) -> int:
  return int(re.search(r"resumed from \S+/(\d+) ", output).group(1))


def _state(checkpoint_dir, step: int) -> dict:
  """A checkpoint's train state as numpy arrays (a gs:// path needs the emulator env)."""
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(f"{checkpoint_dir}/{step}/state")


def _assert_same_state(a: dict, b: dict):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _assert_same_curve(workdir_metrics: dict, reference_metrics: dict):
  for step in range(STEPS):
    a, b = workdir_metrics[step], reference_metrics[step]
    assert (a["phase"], a["lr"], a["loss"], a["tokens_seen"]) == (
        b["phase"], b["lr"], b["loss"], b["tokens_seen"]), step
    assert a.get("eval_loss") == b.get("eval_loss"), step


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
  """Runs after the first load their compiled step functions from disk: ~3x faster."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
    patch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    patch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  _Runs(workdir, workdir.parent / "reference_logs").run()
  return workdir, read_metrics(workdir), _state(workdir / "checkpoints", STEPS)


def test_killed_three_times_even_mid_save_then_resumed_equals_the_uninterrupted_run(
    reference, tmp_path):
  _, reference_metrics, reference_state = reference
  runs = _Runs(tmp_path / "killed", tmp_path / "logs")
  checkpoints = tmp_path / "killed" / "checkpoints"
  seed = random.randrange(2**32)  # kill moments vary from run to run; failures say it.
  rng = random.Random(seed)

  # 1. While the drop-point checkpoint is being written (orbax's tmp directory).
  proc = runs.start()
  _wait_until(lambda: (checkpoints / f"{DROP}.orbax-checkpoint-tmp").exists(), proc,
              "the drop-point save", poll=0.0005)
  proc.kill()
  proc.wait()
  assert not (checkpoints / str(DROP)).exists(), "the kill came after the save finished"
  # 2. Restarted: from step 12, never the half-written 16; killed after the drop.
  output = runs.kill_when(DROP, DROP, rng.uniform(0, 0.02))
  assert _resumed_from(output) == 12, (seed, output[-2000:])
  # 3. From the drop point (NoPE, recalibration schedule); killed mid-recalibration.
  output = runs.kill_when(rng.randint(DROP + 4, DROP + 6), DROP + 4, rng.uniform(0, .02))
  assert _resumed_from(output) == DROP, (seed, output[-2000:])
  # 4. From mid-recalibration to the end.
  _, output = runs.run()
  assert _resumed_from(output) == DROP + 4, (seed, output[-2000:])

  _assert_same_state(_state(checkpoints, STEPS), reference_state)
  _assert_same_curve(read_metrics(tmp_path / "killed"), reference_metrics)
  assert (checkpoints / str(DROP)).is_dir()  # the drop point is kept.


def test_drope_run_branched_from_the_rope_run_at_its_drop_equals_the_uninterrupted_run(
    reference, tmp_path):
  """benchmarks/reproduce.py trains a DroPE run's RoPE part once, in the RoPE run."""
  _, reference_metrics, reference_state = reference
  rope = tmp_path / "rope"
  _Runs(rope, tmp_path / "rope_logs").run("--config=configs/tiny.py:rope",
                                          f"--config.checkpoint.keep_period={DROP}")
  reproduce.branch(str(rope), str(tmp_path / "drope"), DROP)
  _, output = _Runs(tmp_path / "drope", tmp_path / "logs").run()
  assert _resumed_from(output) == DROP, output[-2000:]
  _assert_same_state(_state(tmp_path / "drope" / "checkpoints", STEPS), reference_state)
  _assert_same_curve(read_metrics(tmp_path / "drope"), reference_metrics)


def test_gs_workdir_killed_and_its_latest_checkpoint_corrupted_still_resumes(
    reference, tmp_path, monkeypatch):
  _, reference_metrics, reference_state = reference
  with gcs_emulator.serve("drope-test") as gcs_env:
    for key, value in gcs_env.items():
      monkeypatch.setenv(key, value)
    from etils import epath  # pylint: disable=g-import-not-at-top
    workdir = epath.Path("gs://drope-test/run")
    checkpoints = workdir / "checkpoints"
    runs = _Runs(workdir, tmp_path / "logs", env=_env(**gcs_env))
    proc = runs.start()
    _wait_until(lambda: (checkpoints / "12" / "commit_success.txt").exists(), proc,
                "checkpoint 12 on gs://", poll=0.2)
    proc.kill()
    proc.wait()
    latest = max(int(p.name) for p in checkpoints.iterdir()
                 if p.name.isdigit() and (p / "commit_success.txt").exists())
    for blob in (checkpoints / str(latest) / "state" / "d").iterdir():
      blob.write_bytes(b"corrupt")

    _, output = runs.run()
    assert f"/{latest} is unreadable" in output, output[-3000:]
    assert _resumed_from(output) == latest - 4, output[-3000:]
    assert (checkpoints / f"{latest}.corrupt").exists()
    _assert_same_state(_state(checkpoints, STEPS), reference_state)
    (tmp_path / "metrics.jsonl").write_text((workdir / "metrics.jsonl").read_text())
    _assert_same_curve(read_metrics(tmp_path), reference_metrics)
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_gs_store_dying_mid_save_leaves_the_previous_checkpoint_to_resume_from(
    reference, tmp_path, monkeypatch):
  _, reference_metrics, reference_state = reference
  emulator = gcs_emulator.Emulator("drope-test", data_dir=tmp_path / "gcs")
  emulator.start(die_on_write="run/checkpoints/12/")
  try:
    for key, value in emulator.env.items():
      monkeypatch.setenv(key, value)
    from etils import epath  # pylint: disable=g-import-not-at-top
    workdir = epath.Path("gs://drope-test/run")
    checkpoints = workdir / "checkpoints"
    runs = _Runs(workdir, tmp_path / "logs", env=_env(**emulator.env))
    proc = runs.start()
    emulator.proc.wait(timeout=300)  # It dies at the first write of checkpoint 12.
    proc.kill()
    proc.wait()

    emulator.start()
    assert (checkpoints / "8" / "commit_success.txt").exists()
    assert not (checkpoints / "12" / "commit_success.txt").exists()
    _, output = runs.run()
    assert _resumed_from(output) == 8, output[-3000:]
    _assert_same_state(_state(checkpoints, STEPS), reference_state)
    (tmp_path / "metrics.jsonl").write_text((workdir / "metrics.jsonl").read_text())
    _assert_same_curve(read_metrics(tmp_path), reference_metrics)
  finally:
    emulator.stop()


def _two_hosts(workdir, logs: pathlib.Path) -> list[_Runs]:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return [_Runs(workdir, logs / f"process_{i}", env=_env(
      DROPE_COORDINATOR=f"127.0.0.1:{port}", DROPE_NUM_PROCESSES="2",
      DROPE_PROCESS_ID=str(i))) for i in range(2)]


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step_and_both_resume(
    tmp_path):
  workdir = tmp_path / "two_hosts"
  # JAX's SIGTERM watcher polls once a second: enough steps that the agreed one comes.
  args = ("--config=configs/tiny.py:rope", "--config.train.steps=80",
          "--config.train.eval_every=100", "--config.checkpoint.every_steps=100")
  hosts = _two_hosts(workdir, tmp_path)
  procs = [host.start(*args) for host in hosts]
  _wait_until(lambda: hosts[0].metrics.exists() and '"step": 5,' in
              hosts[0].metrics.read_text(), procs[0], "step 5")
  procs[1].send_signal(signal.SIGTERM)  # a maintenance event seen by one host first.
  for host, proc in zip(hosts, procs):
    assert proc.wait(timeout=300) == 0, host.output()[-3000:]
  saved = int(re.search(r"preempted: saved step (\d+)", hosts[0].output()).group(1))
  assert 5 < saved < 80
  assert (workdir / "checkpoints" / str(saved) / "state" / "ocdbt.process_1").exists()

  hosts = _two_hosts(workdir, tmp_path / "again")
  procs = [host.start(*args) for host in hosts]
  for host, proc in zip(hosts, procs):
    assert proc.wait(timeout=300) == 0, host.output()[-3000:]
  assert _resumed_from(hosts[0].output()) == saved
  assert (workdir / "checkpoints" / "80").is_dir()


@pytest.mark.parametrize("on_nan", ["stop", "skip"])
def test_a_non_finite_loss_stops_cleanly_or_is_skipped(reference, tmp_path, on_nan):
  reference_dir, _, reference_state = reference
  workdir = tmp_path / on_nan
  shutil.copytree(reference_dir, workdir)
  # Resume at step 24 with 4 more steps at an absurd recalibration lr: step 24's update
  # is finite but huge, and step 25's loss is not.
  code, output = _Runs(workdir, tmp_path / "logs").run(
      "--config.train.steps=28", "--config.drope.lr=1e30",
      f"--config.train.on_nan={on_nan}", check=False)
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                 if p.name.isdigit())
  if on_nan == "stop":
    assert code != 0
    assert "error: non-finite loss" in output and "at step 25" in output, output[-3000:]
    assert "Traceback" not in output
    assert steps[-1] == STEPS
    _assert_same_state(_state(workdir / "checkpoints", STEPS), reference_state)
  else:
    assert code == 0, output[-3000:]
    assert "non-finite loss or gradient; batch skipped" in output
    metrics = read_metrics(workdir)
    assert [s for s in range(STEPS, 28) if metrics[s].get("skipped")] == [25, 26, 27]
    assert steps[-1] == 28
    final = _state(workdir / "checkpoints", 28)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(final["params"]))


def _init_from(reference_dir, tmp_path, *overrides):
  """A 4-step NoPE run at lr 0 from the reference's drop-point checkpoint."""
  workdir = tmp_path / "run"
  code, output = _Runs(workdir, tmp_path / "logs").run(
      "--config=configs/tiny.py:nope", "--config.train.steps=4",
      "--config.train.warmup_steps=1", "--config.train.lr=0", f"--config.checkpoint.init_from={reference_dir}",
      f"--config.checkpoint.init_step={DROP}", *overrides, check=False)
  return workdir, code, output


def test_init_from_params_only_adds_qk_norm_gains_at_one(reference, tmp_path):
  reference_dir, _, _ = reference
  workdir, code, output = _init_from(reference_dir, tmp_path, "--config.model.qk_norm=q")
  assert code == 0, output[-3000:]
  assert "initialised from" in output and "q_norm" in output
  source = _state(reference_dir / "checkpoints", DROP)
  state = _state(workdir / "checkpoints", 4)
  blocks = state["params"]["blocks"]  # every layer: [L, ...] arrays.
  np.testing.assert_array_equal(blocks["attn"].pop("q_norm")["scale"]["value"], 1.0)
  _assert_same_state(state["params"], source["params"])  # lr 0: as loaded.
  assert int(state["opt_state"]["count"]) == 4  # fresh moments.


def test_init_from_params_and_optimizer_continues_the_moments(reference, tmp_path):
  reference_dir, _, _ = reference
  workdir, code, output = _init_from(reference_dir, tmp_path,
                                     "--config.checkpoint.init_optimizer=true")
  assert code == 0, output[-3000:]
  source = _state(reference_dir / "checkpoints", DROP)
  state = _state(workdir / "checkpoints", 4)
  _assert_same_state(state["params"], source["params"])
  assert int(state["opt_state"]["count"]) == int(source["opt_state"]["count"]) + 4
  assert read_metrics(workdir)[0]["lr"] == 0.0 and state["step"] == 4  # its own schedule.


def test_init_from_another_architecture_is_refused_by_name(reference, tmp_path):
  reference_dir, _, _ = reference
  workdir, code, output = _init_from(reference_dir, tmp_path, "--config.model.d_ff=96")
  assert code == 2 and not workdir.exists()  # refused before compiling anything.
  assert "is another architecture: model.d_ff is 128 there and 96 here" in output
  assert "Traceback" not in output


def test_training_data_read_from_gs_resumes_bitwise(tmp_path, monkeypatch):
  """Shards prepared into a bucket, trained on from there; a resumed run equals the
  uninterrupted one."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from drope_jax.data import prepare as prepare_lib  # pylint: disable=g-import-not-at-top
  from drope_jax.data import sources  # pylint: disable=g-import-not-at-top
  root, files = sources.stdlib_files("train", 0.05)
  corpus = tmp_path / "corpus.jsonl"
  corpus.write_text("".join(json.dumps({"text": (root / f).read_text(errors="replace")})
                            + "\n" for f in files[:200]))
  with gcs_emulator.serve("drope-data") as gcs_env:
    for key, value in gcs_env.items():
      monkeypatch.setenv(key, value)
    prepare_lib.prepare(input_patterns=str(corpus), output="gs://drope-data/shards",
                        tokenizer_spec="byte", docs_per_shard=64)
    assert (epath.Path("gs://drope-data/shards") / "train-00001.array_record").exists()
    data = ("--config.data.source=shards", "--config.data.paths=gs://drope-data/shards",
            "--config.train.steps=8", "--config.drope.drop_at_step=4",
            "--config.train.warmup_steps=2")
    env = _env(**gcs_env, DROPE_DATA_CACHE=str(tmp_path / "cache"))
    uninterrupted = tmp_path / "uninterrupted"
    _Runs(uninterrupted, tmp_path / "logs_a", env=env).run(*data)
    resumed = tmp_path / "resumed"
    shutil.copytree(uninterrupted, resumed)
    shutil.rmtree(resumed / "checkpoints" / "8")
    _, output = _Runs(resumed, tmp_path / "logs_b", env=env).run(*data)
  assert _resumed_from(output) == 4, output[-3000:]
  _assert_same_state(_state(resumed / "checkpoints", 8),
                     _state(uninterrupted / "checkpoints", 8))
def test_qk_norm_added_at_the_drop_resumes_on_either_side_bitwise(tmp_path):
  """drope.qk_norm=q in one job: q_norm gains join at the drop. Resumed from the
  drop-point checkpoint (no gains yet) or from one after it (gains and their moments),
  the run ends bitwise equal to the uninterrupted one."""
  qk_norm = "--config.drope.qk_norm=q"
  reference = tmp_path / "reference"
  _Runs(reference, tmp_path / "logs").run(qk_norm)
  reference_metrics = read_metrics(reference)
  reference_state = _state(reference / "checkpoints", STEPS)
  at_drop = _state(reference / "checkpoints", DROP)["params"]["blocks"]
  assert "q_norm" not in at_drop["attn"]
  q_norm_LHD = reference_state["params"]["blocks"]["attn"]["q_norm"]["scale"]["value"]
  for layer_q_norm_HD in q_norm_LHD:
    assert not np.all(layer_q_norm_HD == 1.0)  # trained.

  for resume_at in (DROP, DROP + 4):
    workdir = tmp_path / f"from_{resume_at}"
    shutil.copytree(reference, workdir)
    for saved in (workdir / "checkpoints").iterdir():
      if saved.name.isdigit() and int(saved.name) > resume_at:
        shutil.rmtree(saved)
    metrics = workdir / "metrics.jsonl"
    metrics.write_text("".join(line for line in metrics.read_text().splitlines(True)
                               if json.loads(line)["step"] < resume_at))
    _, output = _Runs(workdir, tmp_path / f"logs_{resume_at}").run(qk_norm)
    assert _resumed_from(output) == resume_at, output[-3000:]
    _assert_same_state(_state(workdir / "checkpoints", STEPS), reference_state)
    _assert_same_curve(read_metrics(workdir), reference_metrics)
