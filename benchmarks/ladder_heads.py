"""Why a rung's DroPE does (not) recover: where the heads look, before and after the drop.

    python -m benchmarks.ladder_heads DIR      # a rung's grid directory (induction, mix)

On fresh induction documents at 1x, for every layer, the best head's attention mass
  previous token   from each position to the one before it (the positional step of an
                   induction circuit: RoPE makes it easy, NoPE must build it from the
                   causal mask), and
  induction        from each answer's query position to the token after the earlier
                   occurrence of its token (the content step).
States: RoPE (final), the same weights just after the drop (RoPE removed, not yet
recalibrated), DroPE after recalibration, NoPE from scratch. Writes DIR/heads.json and
DIR/heads.png; benchmarks/ladder_report.py adds them to the report.
"""

import dataclasses
import json
import os
import sys

import jax
import numpy as np
from flax import nnx
from matplotlib.figure import Figure

from drope_jax import parallel
from drope_jax.data import tasks
from drope_jax.eval import attention_probe
from drope_jax.eval import loading

DOCS = 64


def attention_masses(run: loading.Run, positional, documents) -> dict:
  """Per layer, the best head's mean previous-token and induction attention mass."""
  tokens_BS = np.stack([d.tokens for d in documents])
  model = nnx.merge(run.graphdef("xla"), run.params)
  with parallel.mesh_context(run.mesh):
    queries_BQ = attention_probe.positions_of(tokens_BS)
    layers = [np.asarray(jax.device_get(attention_probe.query_attention(
        block.attn, h_BSE, positions_BS, queries_BQ, positional)[0]))
              for block, h_BSE, positions_BS in attention_probe.layer_inputs(
                  model, tokens_BS, positional)]
  previous, induction = [], []
  for probs_BHQT in layers:
    s = probs_BHQT.shape[-1]
    previous_BH = probs_BHQT[:, :, np.arange(1, s), np.arange(s - 1)].mean(-1)
    sources = [(b, q, q - d + 1) for b, doc in enumerate(documents)
               for q, d in zip(doc.answers - 1, doc.distances)]
    induction_H = np.mean([probs_BHQT[b, :, q, t] for b, q, t in sources], axis=0)
    previous.append(float(previous_BH.mean(0).max()))
    induction.append(float(induction_H.max()))
  return dict(previous_token=previous, induction=induction)


def measure(grid: str) -> dict:
  states = {}
  rope = loading.load_run(os.path.join(grid, "rope"))
  task = next(n for n in rope.config.data.source.split(",") if n in tasks.TASKS)
  params = tasks.Params.from_config(rope.config.data.task)
  documents = tasks.documents(task, params, rope.tokenizer(), length=rope.train_len,
                              seed=0, count=DOCS)
  nope_mode = dataclasses.replace(rope.positional(), kind="nope")
  states["RoPE"] = attention_masses(rope, rope.positional(), documents)
  states["RoPE weights, RoPE dropped"] = attention_masses(rope, nope_mode, documents)
  for name, label in (("drope", "DroPE (87.5%), recalibrated"),
                      ("drope_half", "DroPE (50%), recalibrated"), ("nope", "NoPE")):
    if os.path.isdir(os.path.join(grid, name)):
      run = loading.load_run(os.path.join(grid, name))
      states[label] = attention_masses(run, run.positional(), documents)
  return dict(task=task, documents=DOCS, train_len=rope.train_len, states=states)


def plot(record: dict, path: str):
  figure = Figure(figsize=(10, 4))
  for axes, key, title in zip(figure.subplots(1, 2), ("previous_token", "induction"),
                              ("previous-token head", "induction head")):
    for label, state in record["states"].items():
      axes.plot(range(len(state[key])), state[key], marker="o", label=label)
    layers = len(next(iter(record["states"].values()))[key])
    axes.set(title=f"best {title}'s mass, by layer", xlabel="layer",
             ylabel="attention mass", ylim=(-0.02, 1.02), xticks=range(layers))
    axes.grid(alpha=0.3)
  figure.axes[0].legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=120)


def main():
  grid = os.path.abspath(sys.argv[1])
  record = measure(grid)
  with open(os.path.join(grid, "heads.json"), "w") as f:
    json.dump(record, f, indent=1)
  plot(record, os.path.join(grid, "heads.png"))
  for label, state in record["states"].items():
    print(f"{label:>30}: previous token " + " ".join(f"{v:.2f}" for v in state[
        "previous_token"]) + " | induction " + " ".join(f"{v:.2f}" for v in state[
            "induction"]))


if __name__ == "__main__":
  main()
