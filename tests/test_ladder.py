"""A synthetic rung's grid end to end through the public CLIs: train, branch, drop,
fit the temperature, evaluate every method, write the report."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--config.train.log_every=1", "--config.train.warmup_steps=1", "--config.drope.warmup_steps=1",
         "--config.train.eval_every=2", "--config.train.batch_size=8",
         "--config.train.seq_len=32", "--config.model.d_model=32",
         "--config.model.d_ff=64", "--config.model.head_dim=8",
         "--config.model.n_layers=2",
         "--config.train.eval_batches=1", "--config.data.task.pairs=1",
         "--config.data.task.span=4"]


def test_a_short_rung_grid_writes_its_report(tmp_path):
  out = tmp_path / "grid"
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.reproduce", "--scale=cpu", "--task=induction",
       "--steps=8", "--runs=rope,drope", "--eval_docs=4", f"--out={out}", "--", *SMALL],
      cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  # Ordinary runs: DroPE branched from RoPE at 87.5% (step 7) and dropped there.
  for run in ("rope", "drope"):
    assert (out / run / "checkpoints" / "8").is_dir()
  with open(out / "drope" / "metrics.jsonl") as f:
    lines = [json.loads(line) for line in f]
  phases = {line["step"]: line["phase"] for line in lines}
  # The in-run accuracy at 1x, every train.eval_every steps: the learning curves.
  assert [l["step"] for l in lines if "induction_accuracy" in l] == [1, 3, 5, 7]
  assert {p for s, p in phases.items() if s < 7} == {"pretrain"}
  assert {p for s, p in phases.items() if s >= 7} == {"recalibrate"}
  # The temperature is fitted on DroPE; a fitted c = 0 would repeat the NoPE rows, so
  # the 'temperature' method is evaluated only when c > 0 (8 steps can fit either).
  with open(out / "drope" / "eval" / "temperature.json") as f:
    c = json.load(f)["c"]
  drope_methods = ("nope", "temperature") if c else ("nope",)
  assert (out / "drope" / "eval" / "induction_temperature.json").exists() == bool(c)
  # Every method of each checkpoint at every length, with accuracy in [0, 1].
  for run, methods in (("rope", ("rope", "pi", "ntk", "yarn", "dynamic_ntk")),
                       ("drope", drope_methods)):
    for method in methods:
      with open(out / run / "eval" / f"induction_{method}.json") as f:
        record = json.load(f)
      assert record["lengths"] == [32, 64, 128, 256]
      assert all(0 <= a <= 1 for a in record["accuracy"])
      for length, answers in zip(record["lengths"], record["answers"]):
        buckets = record["by_distance"][str(length)]
        assert sum(b["answers"] for b in buckets) == answers == 4 * 3
  report = (out / "report.md").read_text()
  for section in ("## Learning at 1x", "## Accuracy by length", "## Recovery after the drop",
                  "## The paper's claims on this rung"):
    assert section in report
  # Where the heads look: RoPE, its weights with RoPE dropped, the recalibrated DroPE.
  with open(out / "heads.json") as f:
    states = json.load(f)["states"]
  assert list(states) == ["RoPE", "RoPE weights, RoPE dropped",
                          "DroPE (87.5%), recalibrated"]
  for state in states.values():
    assert len(state["previous_token"]) == len(state["induction"]) == 2  # layers.
    assert all(0 <= v <= 1 for v in state["previous_token"] + state["induction"])
  assert "## Where the heads look" in report
  for png in ("learning_curves.png", "accuracy_vs_length.png", "recovery.png",
              "accuracy_by_distance.png", "heads.png"):
    assert (out / png).stat().st_size > 0
