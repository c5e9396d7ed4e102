"""End to end: train a tiny DroPE run, then evaluate its RoPE and NoPE checkpoints."""

import json
import os
import subprocess
import sys

import pytest

from drope_jax.eval import loading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_FLAGS = (
    "--config=configs/tiny.py", "--config.train.steps=12", "--config.drope.drop_at_step=8",
    "--config.train.seq_len=64", "--config.train.batch_size=4",
    "--config.train.eval_every=100", "--config.train.eval_batches=1",
    "--config.train.warmup_steps=2", "--config.drope.warmup_steps=2",
    "--config.checkpoint.every_steps=4", "--config.model.d_model=64",
    "--config.model.d_ff=128", "--config.model.n_layers=2", "--config.model.head_dim=16")
# 1x is too short for a byte-level NIAH prompt (skipped); 8x = 512 tokens fits one.
EVAL_FLAGS = ("--lengths=1,8", "--eval_tokens=1200", "--niah_variants=single",
              "--niah_trials=1", "--niah_depths=0.5")


def _python(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("run") / "drope-tiny")
  done = _python("drope_jax.train", f"--workdir={path}", *TRAIN_FLAGS)
  assert done.returncode == 0, done.stderr[-3000:]
  return path


def _read(workdir, name):
  with open(os.path.join(workdir, "eval", name)) as f:
    return json.load(f)


def test_evaluate_writes_json_report_and_plots_for_rope_and_nope_checkpoints(
    workdir, tmp_path):
  rope = _python("drope_jax.evaluate", f"--workdir={workdir}", "--step=8",
                 "--methods=none,yarn", *EVAL_FLAGS)
  assert rope.returncode == 0, rope.stderr[-3000:]
  assert "perplexity        yarn length    512" in rope.stdout

  fit = _python("drope_jax.evaluate", f"--workdir={workdir}", "--fit_temperature",
                "--length=2", "--eval_tokens=600")
  assert fit.returncode == 0, fit.stderr[-3000:]
  c = _read(workdir, "temperature.json")["c"]
  assert 0 <= c <= 1 and f"c = {c:.3f}" in fit.stdout

  nope = _python("drope_jax.evaluate", f"--workdir={workdir}", "--evals=perplexity",
                 "--methods=none,temperature", *EVAL_FLAGS)  # c: the one just fitted.
  assert nope.returncode == 0, nope.stderr[-3000:]

  for method, step in (("rope", 8), ("yarn", 8), ("nope", 12), ("temperature", 12)):
    data = _read(workdir, f"perplexity_{method}.json")
    assert (data["run"], data["method"], data["step"]) == ("drope-tiny", method, step)
    assert data["train_len"] == 64 and data["lengths"] == [64, 512]
    assert len(data["perplexity"]) == 2 and all(p > 1 for p in data["perplexity"])
    buckets = data["position_buckets"]
    assert buckets["edges"][-1] == 512 and buckets["loss"]["64"][4] is None
  assert _read(workdir, "perplexity_temperature.json")["temperature_c"] == c
  for method in ("rope", "yarn"):
    (cell,) = _read(workdir, f"niah_{method}.json")["results"]
    assert (cell["variant"], cell["length"], cell["depth"], cell["trials"]) == (
        "single", 512, 0.5, 1)
  with open(os.path.join(workdir, "eval", "report.md")) as f:
    table = f.read()
  for row in ("| drope-tiny | rope |", "| drope-tiny | temperature |"):
    assert row in table
  assert os.path.exists(os.path.join(workdir, "eval", "perplexity_vs_length.png"))
  assert os.path.exists(os.path.join(workdir, "eval", "niah_by_variant.png"))

  out = str(tmp_path / "compare")
  compared = _python("drope_jax.evaluate", "--compare", workdir, f"--out={out}")
  assert compared.returncode == 0, compared.stderr[-3000:]
  assert os.path.exists(os.path.join(out, "report.md"))


def test_analyses_write_json_and_plots(workdir, tmp_path):
  done = _python("drope_jax.evaluate", f"--workdir={workdir}", "--step=8",
                 "--evals=needle_attention,nonuniformity_grad", "--methods=none,yarn",
                 "--nonuniformity_rows=2", *EVAL_FLAGS)
  assert done.returncode == 0, done.stderr[-3000:]
  for method in ("rope", "yarn"):
    data = _read(workdir, f"needle_attention_{method}.json")
    assert (data["method"], data["lengths"], data["prompts"]) == (method, [512], [1])
    centre = data["metrics"]["centre"][0]
    assert len(centre) == 2 and len(centre[0]) == 4  # layers x heads
    assert all(0 <= m <= 1 for row in centre for m in row)
  grads = _read(workdir, "nonuniformity_grad.json")["nonuniformity"]
  for mode in ("rope", "nope"):
    assert all(g > 0 for g in grads[mode]["diagonal"]["grad_norm"])
  with open(os.path.join(workdir, "eval", "report.md")) as f:
    text = f.read()
  for png in ("needle_attention_drope-tiny_yarn.png", "nonuniformity_grad.png"):
    assert f"({png})" in text and os.path.exists(os.path.join(workdir, "eval", png))
  out = str(tmp_path / "compare")
  compared = _python("drope_jax.evaluate", "--compare", workdir, f"--out={out}")
  assert compared.returncode == 0, compared.stderr[-3000:]
  assert "## Non-uniformity gradient at initialisation" in open(
      os.path.join(out, "report.md")).read()


def test_bad_input_exits_2_with_one_clear_message(workdir, tmp_path):
  empty = _python("drope_jax.evaluate", f"--workdir={tmp_path}")
  assert empty.returncode == 2 and "has no checkpoints/" in empty.stderr
  method = _python("drope_jax.evaluate", f"--workdir={workdir}", "--step=8",
                   "--methods=temperature")
  assert method.returncode == 2
  assert "unknown method 'temperature'" in method.stderr
  assert "is a RoPE checkpoint" in method.stderr
  with pytest.raises(loading.RunError, match=r"step 5 is not checkpointed.*4, 8, 12"):
    loading.load_run(workdir, step=5)


def test_generate_cli_continues_a_prompt_from_the_latest_checkpoint(workdir):
  done = _python("drope_jax.generate", f"--workdir={workdir}", "--prompt=def main(",
                 "--max_new_tokens=12", "--temperature=0.8", "--top_k=20")
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.startswith("def main(") and len(done.stdout) > len("def main(\n")
