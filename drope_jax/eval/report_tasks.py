"""The synthetic-task section of eval/report.md: accuracy by length and by distance.

eval/<task>_<method>.json (task: recall | copy | induction):
  {"run": "rope", "method": "yarn", "train_len": 128,
   "lengths": [128, 256],            evaluation lengths, tokens
   "accuracy": [0.98, 0.41],         one per length, in [0, 1]
   "answers": [3584, 3584],          answers scored per length
   "by_distance": {"256": [{"lo": 0, "hi": 32, "answers": 120, "accuracy": 0.97},
                           ...]}}    per length; accuracy null for empty buckets
"""

import os

import numpy as np
from matplotlib.figure import Figure

KEYS = ("run", "method", "train_len", "lengths", "accuracy", "by_distance")


def task_of(path: str) -> str:
  return os.path.basename(path).split("_", 1)[0]


def section(tasks: dict, out_dir: str) -> tuple[list[str], list[str]]:
  """tasks: {(task, run, method): record} -> (markdown lines, PNG names)."""
  multiples = sorted({length / r["train_len"] for r in tasks.values()
                      for length in r["lengths"]})
  lines = ["## Synthetic tasks: accuracy (%) at multiples of the training length", "",
           "| task | run | method | " + " | ".join(f"{m:g}x" for m in multiples) + " |",
           "|---|---|---|" + "---:|" * len(multiples)]
  for (task, run, method), record in sorted(tasks.items()):
    by_multiple = {length / record["train_len"]: value
                   for length, value in zip(record["lengths"], record["accuracy"])}
    cells = [f"{100 * by_multiple[m]:.1f}" if m in by_multiple else "-"
             for m in multiples]
    lines.append(f"| {task} | {run} | {method} | " + " | ".join(cells) + " |")
  return lines, [_plot_lengths(tasks, out_dir), _plot_distance(tasks, out_dir)]


def _plot_lengths(tasks, out_dir):
  names = sorted({task for task, _, _ in tasks})
  figure = Figure(layout="constrained", figsize=(5 * len(names), 4))
  for axes, name in zip(np.atleast_1d(figure.subplots(1, len(names))), names):
    for (task, run, method), record in sorted(tasks.items()):
      if task == name:
        multiples = [length / record["train_len"] for length in record["lengths"]]
        axes.plot(multiples, record["accuracy"], marker="o", label=f"{run} ({method})")
    axes.set_xscale("log", base=2)
    axes.set(title=name, xlabel="length / training length", ylabel="accuracy",
             ylim=(-0.02, 1.02))
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7)
  figure.savefig(os.path.join(out_dir, "task_accuracy.png"), dpi=120)
  return "task_accuracy.png"


def _plot_distance(tasks, out_dir):
  """At each record's longest length: accuracy by the answer's distance to its cue."""
  names = sorted({task for task, _, _ in tasks})
  figure = Figure(layout="constrained", figsize=(5 * len(names), 4))
  for axes, name in zip(np.atleast_1d(figure.subplots(1, len(names))), names):
    for (task, run, method), record in sorted(tasks.items()):
      if task != name:
        continue
      longest = str(record["lengths"][-1])
      points = [((b["lo"] + b["hi"]) / 2 / record["train_len"], b["accuracy"])
                for b in record["by_distance"][longest] if b["accuracy"] is not None]
      if points:
        axes.plot(*zip(*points), marker=".", label=f"{run} ({method}) at "
                  f"{int(longest) // record['train_len']}x")
    axes.axvline(1, color="gray", linestyle="--", linewidth=1)
    axes.set(title=f"{name}: by distance", ylim=(-0.02, 1.02),
             xlabel="distance from cue to answer / training length", ylabel="accuracy")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7)
  figure.savefig(os.path.join(out_dir, "task_accuracy_by_distance.png"), dpi=120)
  return "task_accuracy_by_distance.png"
