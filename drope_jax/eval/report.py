"""One markdown table and PNG plots comparing the long-context evals of runs.

    python -m drope_jax.eval.report OUT_DIR WORKDIR_OR_JSON...

Reads the JSON files that `python -m drope_jax.evaluate` writes under
<workdir>/eval/. A row of the table is one (run, method) pair, so one RoPE run
evaluated with several scaling methods gives several rows.

eval/perplexity*.json:
  {"run": "rope-1b",              name of the run
   "method": "yarn",              positional method as evaluated
   "train_len": 1024,             training context length, tokens
   "lengths": [1024, 2048],       evaluation lengths, tokens
   "perplexity": [21.7, 25.3],    one per length
   "position_buckets": {          optional: mean loss by token position
     "edges": [0, 512, 1024, 2048],        bucket edges, tokens
     "loss": {"2048": [3.2, 3.1, 3.3]}}}   per length, one per bucket
                                           (null for buckets past it)

eval/niah*.json:
  {"run": "rope-1b", "method": "yarn",
   "train_len": 1024,             optional: else the run's perplexity file's
   "results": [{"variant": "multikey", "length": 2048, "depth": 0.5,
                "success_rate": 0.42, "trials": 50}]}   success_rate in [0, 1]

eval/needle_attention*.json, eval/nonuniformity_grad*.json: the analyses, each a
section of its own; schemas in drope_jax/eval/report_analysis.py.

Lengths appear in the table as multiples of the training length ("2x"), so
runs trained at different lengths line up.
"""

import argparse
import collections
import glob
import json
import math
import os
import re

from matplotlib import ticker
from matplotlib.figure import Figure
import numpy as np

from drope_jax.data.tasks import TASKS
from drope_jax.eval import report_analysis
from drope_jax.eval import report_tasks

_PERPLEXITY_KEYS = ("run", "method", "train_len", "lengths", "perplexity")
_NIAH_KEYS = ("run", "method", "results")
_RESULT_KEYS = ("variant", "length", "depth", "success_rate", "trials")


def write_report(run_dirs_or_json: list[str], out_dir: str) -> str:
  """Writes report.md and its PNGs into `out_dir`; returns report.md's path."""
  perplexity, niah, needle, nonuniformity, tasks = _load(run_dirs_or_json)
  if not (perplexity or niah or needle or nonuniformity or tasks):
    raise ValueError(
        f"no evaluation JSON found in {run_dirs_or_json}: run "
        "`python -m drope_jax.evaluate --workdir=<dir>` first")
  os.makedirs(out_dir, exist_ok=True)
  rows = list(dict.fromkeys([*perplexity, *niah]))
  train_lens = {row: (perplexity[row]["train_len"] if row in perplexity
                      else niah[row].get("train_len")) for row in rows}
  for row in rows:
    if train_lens[row] is None:
      raise ValueError(
          f"NIAH results of {_label(row)} need \"train_len\": add it to the "
          "niah JSON or pass the run's perplexity JSON too")

  plots = []
  if perplexity:
    plots.append(_plot_perplexity(perplexity, out_dir))
  if any("position_buckets" in p for p in perplexity.values()):
    plots.append(_plot_position_loss(perplexity, out_dir))
  if niah:
    plots.append(_plot_niah_bars(niah, train_lens, out_dir))
    plots.extend(_plot_niah_heatmap(row, data["results"], train_lens[row],
                                    out_dir) for row, data in niah.items())

  lines = ["# Long-context evaluation", ""]
  if rows:
    lines += ["Perplexity at multiples of the training length; NIAH success rate "
              "(%) per variant and length, averaged over depths.", "",
              *_table(rows, perplexity, niah, train_lens), "", "## Plots", ""]
    lines += _images(plots)
  for data, section in ((tasks, report_tasks.section),
                        (needle, report_analysis.needle_section),
                        (nonuniformity, report_analysis.nonuniformity_section)):
    if data:
      section_lines, section_plots = section(data, out_dir)
      lines += [*section_lines, "", *_images(section_plots)]
  path = os.path.join(out_dir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def _images(names):
  return [f"![{os.path.splitext(name)[0]}]({name})\n" for name in names]


def _load(paths):
  """Returns ({row: perplexity dict}, {row: niah dict}, {row: needle attention dict},
  {run: nonuniformity dict}, {(task, *row): task accuracy dict}); row = (run, method)."""
  perplexity, niah, needle, nonuniformity, tasks = {}, {}, {}, {}, {}
  for path in paths:
    if os.path.isdir(path):
      folder = os.path.join(path, "eval") if os.path.isdir(
          os.path.join(path, "eval")) else path
      files = sorted(sum((glob.glob(os.path.join(folder, f"{kind}*.json")) for kind in (
          "perplexity", "niah", "needle_attention", "nonuniformity_grad",
          *TASKS)), []))
    elif os.path.isfile(path):
      files = [path]
    else:
      raise FileNotFoundError(f"no run directory or JSON file at {path}")
    for file in files:
      with open(file) as f:
        data = json.load(f)
      if "accuracy" in data:
        _require(data, report_tasks.KEYS, file)
        tasks[report_tasks.task_of(file), data["run"], data["method"]] = data
      elif "nonuniformity" in data:
        _require(data, report_analysis.NONUNIFORMITY_KEYS, file)
        nonuniformity[data["run"]] = data
      elif "metrics" in data:
        _require(data, report_analysis.NEEDLE_KEYS, file)
        needle[data["run"], data["method"]] = data
      elif "perplexity" in data:
        _require(data, _PERPLEXITY_KEYS, file)
        perplexity[data["run"], data["method"]] = data
      elif "results" in data:
        _require(data, _NIAH_KEYS, file)
        for result in data["results"]:
          _require(result, _RESULT_KEYS, file)
        niah[data["run"], data["method"]] = data
      else:
        raise ValueError(
            f"{file} is not a perplexity, NIAH, needle attention or non-uniformity "
            "evaluation: see the schemas in drope_jax/eval/report.py")
  return perplexity, niah, needle, nonuniformity, tasks


def _require(data, keys, file):
  missing = [key for key in keys if key not in data]
  if missing:
    raise ValueError(f"{file} lacks {', '.join(missing)}: see the schema in "
                     "drope_jax/eval/report.py")


def _label(row):
  run, method = row
  return f"{run} ({method})"


def _slug(text):
  return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _multiple(length, train_len):
  return f"{length / train_len:g}x"


def _niah_means(results, train_len):
  """Trial-weighted success (%) per (variant, length multiple)."""
  totals = collections.defaultdict(lambda: [0.0, 0])
  for r in results:
    total = totals[r["variant"], _multiple(r["length"], train_len)]
    total[0] += r["success_rate"] * r["trials"]
    total[1] += r["trials"]
  return {key: 100 * s / n for key, (s, n) in totals.items() if n}


def _by_multiple(labels):
  return sorted(set(labels), key=lambda m: float(m[:-1]))


def _table(rows, perplexity, niah, train_lens):
  ppl = {row: {_multiple(length, p["train_len"]): value
               for length, value in zip(p["lengths"], p["perplexity"])}
         for row, p in perplexity.items()}
  success = {row: _niah_means(n["results"], train_lens[row])
             for row, n in niah.items()}
  ppl_columns = _by_multiple(m for values in ppl.values() for m in values)
  variants = list(dict.fromkeys(
      r["variant"] for n in niah.values() for r in n["results"]))
  niah_multiples = _by_multiple(m for values in success.values()
                                for _, m in values)
  niah_columns = [(v, m) for v in variants for m in niah_multiples
                  if any((v, m) in values for values in success.values())]

  header = (["run", "method", "train len"] + [f"ppl {m}" for m in ppl_columns]
            + [f"{v} {m}" for v, m in niah_columns])
  lines = ["| " + " | ".join(header) + " |",
           "|" + "---|" * 3 + "---:|" * (len(header) - 3)]
  for row in rows:
    cells = [row[0], row[1], str(train_lens[row])]
    cells += [_cell(ppl.get(row, {}).get(m), 2) for m in ppl_columns]
    cells += [_cell(success.get(row, {}).get(c), 1) for c in niah_columns]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _cell(value, digits):
  if value is None or not math.isfinite(value):
    return "-"
  return f"{value:.{digits}f}"


def _save(figure, out_dir, name):
  figure.savefig(os.path.join(out_dir, name), dpi=120)
  return name


def _plot_perplexity(perplexity, out_dir):
  figure = Figure(layout="constrained", figsize=(7, 4.5))
  axes = figure.subplots()
  for row, p in perplexity.items():
    axes.plot(p["lengths"], p["perplexity"], marker="o", label=_label(row))
  for train_len in sorted({p["train_len"] for p in perplexity.values()}):
    axes.axvline(train_len, color="gray", linestyle="--", linewidth=1)
    axes.annotate(f"train {train_len}", (train_len, 1), xycoords=(
        "data", "axes fraction"), rotation=90, va="top", ha="right",
                  fontsize=8, color="gray")
  axes.set_xscale("log", base=2)
  axes.set_yscale("log")
  lengths = sorted({n for p in perplexity.values() for n in p["lengths"]})
  axes.set_xticks(lengths, [str(n) for n in lengths])
  axes.yaxis.set_major_formatter(ticker.ScalarFormatter())
  axes.yaxis.set_minor_formatter(ticker.ScalarFormatter())
  axes.set(xlabel="evaluation length (tokens)", ylabel="perplexity",
           title="Perplexity vs. context length")
  figure.legend(fontsize=8, loc="outside right upper")
  axes.grid(True, which="both", alpha=0.3)
  return _save(figure, out_dir, "perplexity_vs_length.png")


def _plot_position_loss(perplexity, out_dir):
  bucketed = {row: p for row, p in perplexity.items() if "position_buckets" in p}
  lengths = sorted({int(length) for p in bucketed.values()
                    for length in p["position_buckets"]["loss"]})
  figure = Figure(layout="constrained", figsize=(4.5 * len(lengths), 4))
  for axes, length in zip(np.atleast_1d(figure.subplots(1, len(lengths),
                                                        sharey=True)), lengths):
    for row, p in bucketed.items():
      loss = p["position_buckets"]["loss"].get(str(length))
      if loss is None:
        continue
      edges = np.asarray(p["position_buckets"]["edges"], float)
      loss = np.array([np.nan if v is None else v for v in loss], float)
      axes.plot((edges[:-1] + edges[1:]) / 2, loss, marker=".", label=_label(row))
      axes.axvline(p["train_len"], color="gray", linestyle="--", linewidth=1)
    axes.set(title=f"length {length}", xlabel="token position")
    axes.grid(True, alpha=0.3)
  figure.axes[0].set_ylabel("mean loss (nats)")
  figure.legend(*figure.axes[0].get_legend_handles_labels(), fontsize=8,
                loc="outside right upper")
  return _save(figure, out_dir, "loss_by_position.png")


def _plot_niah_bars(niah, train_lens, out_dir):
  success = {row: _niah_means(n["results"], train_lens[row])
             for row, n in niah.items()}
  variants = list(dict.fromkeys(v for s in success.values() for v, _ in s))
  multiples = _by_multiple(m for s in success.values() for _, m in s)
  figure = Figure(layout="constrained", figsize=(1.5 + 1.2 * len(variants) * len(multiples), 4))
  width = 0.8 / len(success)
  x = np.arange(len(variants))
  for axes, multiple in zip(np.atleast_1d(figure.subplots(
      1, len(multiples), sharey=True)), multiples):
    for i, (row, s) in enumerate(success.items()):
      heights = [s.get((v, multiple), np.nan) for v in variants]
      axes.bar(x + (i - (len(success) - 1) / 2) * width, heights, width,
               label=_label(row))
    axes.set_xticks(x, variants)
    axes.set(title=f"NIAH at {multiple} training length", ylim=(0, 100))
    axes.grid(True, axis="y", alpha=0.3)
  figure.axes[0].set_ylabel("success rate (%)")
  figure.axes[0].legend(fontsize=8)
  return _save(figure, out_dir, "niah_by_variant.png")


def _plot_niah_heatmap(row, results, train_len, out_dir):
  by_variant = collections.defaultdict(list)
  for r in results:
    by_variant[r["variant"]].append(r)
  figure = Figure(layout="constrained", figsize=(0.5 + 3.5 * len(by_variant), 3.5))
  for axes, (variant, variant_results) in zip(np.atleast_1d(figure.subplots(
      1, len(by_variant))), by_variant.items()):
    depths = sorted({r["depth"] for r in variant_results})
    lengths = sorted({r["length"] for r in variant_results})
    grid = np.full((len(depths), len(lengths)), np.nan)
    for r in variant_results:
      grid[depths.index(r["depth"]), lengths.index(r["length"])] = (
          100 * r["success_rate"])
    image = axes.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
      if np.isfinite(value):
        axes.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7)
    axes.set_xticks(range(len(lengths)),
                    [_multiple(length, train_len) for length in lengths])
    axes.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    axes.set(title=variant, xlabel="length (x training)")
  figure.axes[0].set_ylabel("needle depth")
  figure.colorbar(image, ax=figure.axes, label="success rate (%)")
  figure.suptitle(f"NIAH: {_label(row)}")
  return _save(figure, out_dir, f"niah_heatmap_{_slug(_label(row))}.png")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out_dir")
  parser.add_argument("runs", nargs="+", help="run workdirs or eval JSON files")
  args = parser.parse_args()
  print(write_report(args.runs, args.out_dir))


if __name__ == "__main__":
  main()
