"""report.md for benchmarks/ladder.py: one rung's grid, and the ladder's summary.

Reads what the public CLIs wrote (metrics.jsonl with `<task>_accuracy`, and
eval/<task>_<method>.json from `drope_jax.evaluate --evals=<task>`), checks the
paper's claims on the rung's numbers and draws the curves. It only reads.

    python -m benchmarks.ladder_report DIR TASK   # rewrite a rung's report
"""

import json
import os
import sys

from matplotlib.figure import Figure

MAIN_RUNS = ("rope", "nope", "drope", "drope_half")
RUN_NAMES = {"rope": "RoPE", "nope": "NoPE", "drope": "DroPE (drop at 87.5%)",
             "drope_half": "DroPE (drop at 50%)"}
METHOD_NAMES = {"rope": "as is", "nope": "as is", "pi": "PI", "ntk": "NTK",
                "yarn": "YaRN", "dynamic_ntk": "dynamic NTK", "temperature": "temperature"}
ROPE_SCALINGS = ("pi", "ntk", "yarn", "dynamic_ntk")
MULTIPLES = (1, 2, 4, 8)
TARGET = 0.9  # "steps to 90%".


# --- reading ---------------------------------------------------------------------------


def load_metrics(workdir: str) -> dict:
  """step -> the last logged line of that step (a resume logs some steps again)."""
  by_step = {}
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        record = json.loads(line)
        by_step[record["step"]] = record
  return dict(sorted(by_step.items()))


def load_accuracy(workdir: str, task: str) -> dict:
  """method -> eval/<task>_<method>.json."""
  found = {}
  directory = os.path.join(workdir, "eval")
  if os.path.isdir(directory):
    for name in sorted(os.listdir(directory)):
      if name.startswith(f"{task}_") and name.endswith(".json"):
        with open(os.path.join(directory, name)) as f:
          record = json.load(f)
        found[record["method"]] = record
  return found


def accuracy_at(record: dict | None, multiple: int) -> float | None:
  if not record:
    return None
  for length, value in zip(record["lengths"], record["accuracy"]):
    if length == multiple * record["train_len"]:
      return value
  return None


def curve(by_step: dict, task: str) -> list[tuple[int, float]]:
  """(step, accuracy at 1x) as logged during training; the step's update included."""
  key = f"{task}_accuracy"
  return [(s + 1, r[key]) for s, r in by_step.items() if key in r]


def steps_to(points, target: float) -> int | None:
  return next((s for s, a in points if a >= target), None)


def _own(accuracy: dict) -> str:
  return "rope" if "rope" in accuracy else "nope"


def _pct(value, digits=1):
  return "n/a" if value is None else f"{100 * value:.{digits}f}"


def _yes(flag) -> str:
  return "holds" if flag else "does not hold"


# --- one rung --------------------------------------------------------------------------


def write_rung(out: str, *, rung: str, task: str, scale: str, steps: int, runs,
               drop_steps: dict, settings: dict, timings: dict | None = None) -> str:
  names = [name for name, _ in runs if os.path.isdir(os.path.join(out, name))]
  changes = dict(runs)
  metrics = {n: load_metrics(os.path.join(out, n)) for n in names}
  accuracy = {n: load_accuracy(os.path.join(out, n), task) for n in names}
  curves = {n: curve(metrics[n], task) for n in names}
  lines = [f"# The {rung} rung ({scale} scale)", ""]
  lines += _setup(rung, task, steps, drop_steps, settings)
  lines += _learning(out, curves, drop_steps)
  lines += _lengths(out, accuracy)
  lines += _distance(out, accuracy)
  lines += _recovery(out, curves, drop_steps)
  lines += _heads(out)
  lines += _temperature(out, names)
  lines += _sweep(accuracy, curves, changes, drop_steps)
  lines += _claims(accuracy, curves, drop_steps)
  lines += _timing(timings or {})
  path = os.path.join(out, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


def _setup(rung, task, steps, drop_steps, settings):
  drops = ", ".join(f"{n} at step {s}" for n, s in drop_steps.items())
  return [
      f"Task `{task}` (drope_jax/data/tasks/{task}.py); model, data and budget in "
      f"`configs/ladder_*.py` (rung `{rung}`): {steps} steps, every run from one seed "
      f"and data order. Drops: {drops}.", "",
      f"Evaluation settings, fixed before the grid ran and the same for every run: "
      f"lengths {settings['lengths']} x the training length; {settings['docs']} fresh "
      f"documents per length from evaluation seed {settings['seed']} (training never "
      f"draws from the evaluation stream); an answer counts when the model's argmax "
      f"next token is right (teacher-forced); the NoPE softmax temperature c is fitted "
      f"at {settings['fit_length']}x on the answers' loss of {settings['fit_docs']} other "
      f"documents (the fit stream), never on the evaluated ones (a run whose data mixes "
      f"in prose fits it on held-out prose, as the paper does).", ""]


def _learning(out, curves, drop_steps):
  figure = Figure(figsize=(8, 4.5))
  axes = figure.subplots()
  for name in MAIN_RUNS:
    if curves.get(name):
      steps, values = zip(*curves[name])
      axes.plot(steps, values, marker="o", ms=2.5, label=RUN_NAMES[name])
  for name in ("drope", "drope_half"):
    if name in drop_steps:
      axes.axvline(drop_steps[name], color="grey", ls=":", lw=1)
  axes.axhline(TARGET, color="black", lw=0.6, ls="--")
  axes.set_xlabel("step")
  axes.set_ylabel("accuracy at 1x (in-run evaluation)")
  axes.set_ylim(-0.02, 1.02)
  axes.grid(alpha=0.3)
  axes.legend()
  figure.tight_layout()
  figure.savefig(os.path.join(out, "learning_curves.png"), dpi=120)
  lines = ["## Learning at 1x", "",
           f"| run | steps to {TARGET:.0%} | final accuracy at 1x (in-run) |",
           "|---|---:|---:|"]
  for name in MAIN_RUNS:
    points = curves.get(name)
    if points:
      reached = steps_to(points, TARGET)
      # A DroPE run is the RoPE run up to its drop: its own curve is the recovery's.
      steps = ("see the recovery" if name in drop_steps else
               reached if reached else "not reached")
      lines.append(f"| {RUN_NAMES[name]} | {steps} | {_pct(points[-1][1])} |")
  return lines + ["", "![learning curves](learning_curves.png)", ""]


def _lengths(out, accuracy):
  lines = ["## Accuracy by length (fresh documents, %)", "",
           "| run | method | " + " | ".join(f"{m}x" for m in MULTIPLES) + " |",
           "|---|---|" + "---:|" * len(MULTIPLES)]
  figure = Figure(figsize=(8, 4.5))
  axes = figure.subplots()
  for name in MAIN_RUNS:
    for method, record in accuracy.get(name, {}).items():
      values = [accuracy_at(record, m) for m in MULTIPLES]
      lines.append(f"| {RUN_NAMES[name]} | {METHOD_NAMES.get(method, method)} | "
                   + " | ".join(_pct(v) for v in values) + " |")
      shown = [(m, v) for m, v in zip(MULTIPLES, values) if v is not None]
      if shown:
        axes.plot(*zip(*shown), marker="o",
                  ls="-" if method in ("rope", "nope") else "--",
                  label=f"{RUN_NAMES[name]}, {METHOD_NAMES.get(method, method)}")
  axes.set_xscale("log", base=2)
  axes.set_xticks(MULTIPLES, [f"{m}x" for m in MULTIPLES])
  axes.set_xlabel("evaluation length / training length")
  axes.set_ylabel("accuracy")
  axes.set_ylim(-0.02, 1.02)
  axes.grid(alpha=0.3)
  axes.legend(fontsize=7, ncol=2)
  figure.tight_layout()
  figure.savefig(os.path.join(out, "accuracy_vs_length.png"), dpi=120)
  return lines + ["", "![accuracy vs length](accuracy_vs_length.png)", ""]


def _distance(out, accuracy):
  """At the longest length, accuracy by how far back the answer's cue sits."""
  figure = Figure(figsize=(8, 4.5))
  axes = figure.subplots()
  drawn = False
  for name in MAIN_RUNS:
    for method, record in accuracy.get(name, {}).items():
      if method not in ("rope", "nope", "yarn", "temperature"):
        continue
      length = str(record["lengths"][-1])
      buckets = record["by_distance"][length]
      points = [((b["lo"] + b["hi"]) / 2 / record["train_len"], b["accuracy"])
                for b in buckets if b["accuracy"] is not None]
      if points:
        axes.plot(*zip(*points), marker=".", label=f"{RUN_NAMES[name]}, "
                  f"{METHOD_NAMES.get(method, method)}")
        drawn = True
  if not drawn:
    return []
  axes.axvline(1, color="grey", ls=":", lw=1)
  axes.set_xlabel("distance from cue to answer / training length")
  axes.set_ylabel(f"accuracy at {MULTIPLES[-1]}x")
  axes.set_ylim(-0.02, 1.02)
  axes.grid(alpha=0.3)
  axes.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(os.path.join(out, "accuracy_by_distance.png"), dpi=120)
  return ["## Accuracy by distance at the longest length", "",
          "Buckets of a quarter of the training length; the dotted line is the training "
          "length (eval/<task>_<method>.json holds every length's buckets).", "",
          "![accuracy by distance](accuracy_by_distance.png)", ""]


def _recovery(out, curves, drop_steps):
  rope = dict(curves.get("rope", []))
  if not rope:
    return []
  rope_final = curves["rope"][-1][1]
  figure = Figure(figsize=(8, 4.5))
  axes = figure.subplots()
  lines = ["## Recovery after the drop", "",
           f"RoPE's final accuracy at 1x: {_pct(rope_final)}%. Steps after the drop until "
           "a DroPE run is within 2 points of it (in-run evaluation, every "
           "`train.eval_every` steps):", "",
           "| run | drop step | accuracy just after the drop | steps to recover | final |",
           "|---|---:|---:|---:|---:|"]
  for name, drop in sorted(drop_steps.items(), key=lambda kv: -kv[1]):
    after = [(s - drop, a) for s, a in curves.get(name, []) if s > drop]
    if not after:
      continue
    back = steps_to(after, rope_final - 0.02)
    lines.append(f"| {RUN_NAMES.get(name, name)} | {drop} | {_pct(after[0][1])} | "
                 f"{back if back is not None else 'not within the run'} | "
                 f"{_pct(after[-1][1])} |")
    axes.plot(*zip(*after), marker="o", ms=2.5, label=f"{RUN_NAMES.get(name, name)}")
  axes.axhline(rope_final, color="black", lw=0.6, ls="--", label="RoPE final")
  axes.set_xlabel("steps since the drop")
  axes.set_ylabel("accuracy at 1x")
  axes.set_ylim(-0.02, 1.02)
  axes.grid(alpha=0.3)
  axes.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(os.path.join(out, "recovery.png"), dpi=120)
  return lines + ["", "![recovery after the drop](recovery.png)", ""]


def _heads(out):
  path = os.path.join(out, "heads.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    record = json.load(f)
  layers = len(next(iter(record["states"].values()))["previous_token"])
  lines = ["## Where the heads look (benchmarks/ladder_heads.py)", "",
           f"On {record['documents']} fresh documents at 1x, per layer, the attention mass "
           "of the best head on the previous token (mean over positions; causal uniform "
           f"attention gives about {_uniform_previous(record['train_len']):.2f}) and, from "
           "each answer's query position, on the token after the earlier occurrence (the "
           "induction step).", "",
           "| state | previous token, by layer | induction, by layer |", "|---|---|---|"]
  for label, state in record["states"].items():
    lines.append(f"| {label} | " + " ".join(f"{v:.2f}" for v in state["previous_token"])
                 + " | " + " ".join(f"{v:.2f}" for v in state["induction"]) + " |")
  return lines + ["", f"({layers} layers.)", "", "![heads](heads.png)", ""]


def _uniform_previous(length: int) -> float:
  """Mean over positions t >= 1 of 1 / (t + 1): uniform causal attention's mass on t - 1."""
  return sum(1 / (t + 1) for t in range(1, length)) / (length - 1)


def _temperature(out, names):
  rows = []
  for name in names:
    path = os.path.join(out, name, "eval", "temperature.json")
    if os.path.exists(path):
      with open(path) as f:
        rows.append(f"| {RUN_NAMES.get(name, name)} | {json.load(f)['c']:.3f} |")
  if not rows:
    return []
  return ["## Fitted softmax temperature", "", "| run | c |", "|---|---:|", *rows, ""]


def _sweep(accuracy, curves, changes, drop_steps):
  names = [n for n in accuracy if n.startswith("sweep/") or n in ("drope", "drope_half")]
  if not names:
    return []
  lines = ["## Recalibration sweep (NoPE as is; one change each from DroPE at 87.5%)", "",
           "| run | change | drop step | " + " | ".join(f"{m}x" for m in MULTIPLES)
           + " |", "|---|---|---:|" + "---:|" * len(MULTIPLES)]
  for name in names:
    record = accuracy[name].get("nope")
    lines.append(f"| {name} | {changes.get(name, '')} | {drop_steps.get(name, '')} | "
                 + " | ".join(_pct(accuracy_at(record, m)) for m in MULTIPLES) + " |")
  return lines + [""]


def rope_best(rope: dict, multiple: int) -> tuple[str | None, float | None]:
  """RoPE's best method at `multiple`: as is or any scaling."""
  scored = {m: accuracy_at(r, multiple) for m, r in rope.items()}
  scored = {m: v for m, v in scored.items() if v is not None}
  if not scored:
    return None, None
  best = max(scored, key=scored.get)
  return best, scored[best]


def claims(accuracy, curves, drop_steps) -> list[tuple[str, bool | None, str]]:
  """(claim, holds, numbers): each claim of the issue on this rung, for DroPE at 87.5%
  (the paper's drop point), then the DroPE claims again for the drop at 50%."""
  out = _claims_for(accuracy, curves, "drope", "DroPE (12.5% recalibration)")
  if accuracy.get("drope_half"):
    half = "DroPE dropped at 50%"
    out += [c for c in _claims_for(accuracy, curves, "drope_half", half) if half in c[0]]
  return out


def _claims_for(accuracy, curves, drope_run, drope_name):
  rope, drope, nope = (accuracy.get(n, {}) for n in ("rope", drope_run, "nope"))
  out = []
  r90, n90 = (steps_to(curves.get(n, []), TARGET) for n in ("rope", "nope"))
  if curves.get("rope"):
    out.append(("RoPE reaches 90% at 1x in clearly fewer steps than NoPE",
                r90 is not None and (n90 is None or r90 <= 0.75 * n90),
                f"steps to 90%: RoPE {r90 or 'never'}, NoPE {n90 or 'never'}"))
  r1 = accuracy_at(rope.get("rope"), 1)
  if r1 is not None:
    falls = [accuracy_at(rope.get("rope"), m) for m in (2, 4)]
    best = [rope_best(rope, m) for m in (2, 4)]
    out.append(("RoPE as is, and its best scaling, fall well below its 1x accuracy at "
                "2x and 4x (by more than 10 points)",
                all(v is not None and v < r1 - 0.1 for v in falls + [b[1] for b in best]),
                f"1x {_pct(r1)}; as is {_pct(falls[0])} / {_pct(falls[1])}; best scaling "
                f"{METHOD_NAMES.get(best[0][0], best[0][0])} {_pct(best[0][1])} at 2x, "
                f"{METHOD_NAMES.get(best[1][0], best[1][0])} {_pct(best[1][1])} at 4x"))
  d = {m: accuracy_at(drope.get("nope"), m) for m in MULTIPLES}
  if r1 is not None and d[1] is not None:
    out.append((f"{drope_name} within 2 points of RoPE at 1x",
                d[1] >= r1 - 0.02, f"{_pct(d[1])} vs {_pct(r1)}"))
    beats = [(m, d[m], rope_best(rope, m)) for m in (2, 4)]
    out.append((f"{drope_name} above every RoPE method at 2x and 4x",
                all(v is not None and b[1] is not None and v > b[1] for _, v, b in beats),
                "; ".join(f"{m}x {_pct(v)} vs best RoPE {_pct(b[1])} "
                          f"({METHOD_NAMES.get(b[0], b[0])})" for m, v, b in beats)))
  if "temperature" in drope:
    t = {m: accuracy_at(drope["temperature"], m) for m in (4, 8)}
    c = drope["temperature"].get("temperature_c")
    out.append((f"A fitted temperature c > 0 helps {drope_name} at 4x and 8x",
                c is not None and c > 0 and all(t[m] is not None and d[m] is not None
                                                and t[m] > d[m] for m in (4, 8)),
                f"c = {c if c is None else round(c, 3)}; 4x {_pct(d[4])} -> {_pct(t[4])}, "
                f"8x {_pct(d[8])} -> {_pct(t[8])}"))
  nope_by = {m: accuracy_at(nope.get("nope"), m) for m in MULTIPLES}
  if nope_by[1] is not None:
    out.append(("NoPE from scratch keeps its 1x accuracy at 4x (within 10 points)",
                nope_by[4] is not None and nope_by[4] >= nope_by[1] - 0.1,
                f"{_pct(nope_by[1])} at 1x, {_pct(nope_by[4])} at 4x"))
  return out


def _claims(accuracy, curves, drop_steps):
  lines = ["## The paper's claims on this rung", ""]
  for claim, holds, numbers in claims(accuracy, curves, drop_steps):
    lines.append(f"- {claim}: **{_yes(holds)}** ({numbers}).")
  return lines + [""]


def _timing(timings):
  if not timings:
    return []
  lines = ["## Time (minutes on this machine, from DIR/timings.json)", ""]
  for stage, by_run in timings.items():
    lines.append(f"- {stage}: {sum(by_run.values()) / 60:.1f} min ("
                 + ", ".join(f"{n} {s / 60:.1f}" for n, s in by_run.items()) + ")")
  return lines + [""]


# --- the ladder ------------------------------------------------------------------------


def write_ladder(out: str, rungs: list[str], *, scale: str, minutes: float) -> str:
  del minutes  # each rung's own timings.json says what its grid cost.
  lines = [f"# The synthetic ladder ({scale} scale)", "",
           "Each rung's report: `<rung>/report.md`. Minutes: training and evaluation of "
           "the rung's grid on this machine (DIR/<rung>/timings.json).", "",
           "| rung | RoPE 1x | RoPE 4x (best method) | NoPE 1x | NoPE 4x | DroPE 1x | "
           "DroPE 4x | claims that hold | minutes |",
           "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
  missing = []
  for rung in rungs:
    rung_dir = os.path.join(out, rung)
    task = _rung_task(rung_dir)
    if task is None:
      missing.append(rung)
      continue
    accuracy = {n: load_accuracy(os.path.join(rung_dir, n), task) for n in MAIN_RUNS}
    curves = {n: curve(load_metrics(os.path.join(rung_dir, n)), task) for n in MAIN_RUNS}
    checked = claims(accuracy, curves, {})
    best4 = rope_best(accuracy["rope"], 4)
    lines.append(
        f"| [{rung}]({rung}/report.md) | {_pct(accuracy_at(accuracy['rope'].get('rope'), 1))} "
        f"| {_pct(best4[1])} ({METHOD_NAMES.get(best4[0], best4[0])}) | "
        f"{_pct(accuracy_at(accuracy['nope'].get('nope'), 1))} | "
        f"{_pct(accuracy_at(accuracy['nope'].get('nope'), 4))} | "
        f"{_pct(accuracy_at(accuracy['drope'].get('nope'), 1))} | "
        f"{_pct(accuracy_at(accuracy['drope'].get('nope'), 4))} | "
        f"{sum(bool(h) for _, h, _ in checked)} of {len(checked)} | "
        f"{_minutes(rung_dir):.0f} |")
  if missing:
    lines += ["", f"Not run to the end here: {', '.join(missing)}."]
  path = os.path.join(out, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


def _minutes(rung_dir: str) -> float:
  path = os.path.join(rung_dir, "timings.json")
  if not os.path.exists(path):
    return float("nan")
  with open(path) as f:
    return sum(sum(runs.values()) for runs in json.load(f).values()) / 60


def _rung_task(rung_dir: str) -> str | None:
  eval_dir = os.path.join(rung_dir, "rope", "eval")
  if not os.path.isdir(eval_dir):
    return None
  for name in sorted(os.listdir(eval_dir)):
    for task in ("recall", "copy", "induction"):
      if name.startswith(f"{task}_"):
        return task
  return None
