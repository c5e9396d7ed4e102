"""The report's analysis sections: attention on the needle, and the non-uniformity
gradient at initialisation. drope_jax/eval/report.py finds the files and calls these.

eval/needle_attention_<method>.json (drope_jax/eval/needle_attention.py defines the
metrics):
  {"run": "rope-1b", "method": "yarn", "train_len": 1024,
   "lengths": [2048],             evaluation lengths, tokens
   "prompts": [50],               prompts per length
   "layers": 24, "heads": 14,
   "metrics": {"centre": [[[...heads] ...layers] ...lengths],   also window, peak,
               ...},                                            sentence, tail
   "chance": {"centre": [0.004], "sentence": [0.02]}}   per length

eval/nonuniformity_grad.json (drope_jax/eval/nonuniformity.py defines the objectives):
  {"run": "rope-1b", "weights": "init", "train_len": 1024, "layers": 24,
   "nonuniformity": {"rope": {"diagonal": {"value": [...layers],
                                           "grad_norm": [...layers]},
                              "off_diagonal": {...}},
                     "nope": {...}}}
"""

import os

from matplotlib.figure import Figure
import numpy as np

NEEDLE_KEYS = ("run", "method", "train_len", "lengths", "prompts", "metrics", "chance")
NONUNIFORMITY_KEYS = ("run", "train_len", "layers", "nonuniformity")
_MODES = {"rope": "RoPE", "nope": "NoPE"}
_OBJECTIVES = {"diagonal": "diagonal (key = query)",
               "off_diagonal": "off-diagonal (key = query - 1)"}


def _slug(text):
  return "".join(c if c.isalnum() or c in "._-" else "_" for c in text).strip("_")


def _multiple(length, train_len):
  return f"{length / train_len:g}x"


def needle_section(needle: dict, out_dir: str) -> tuple[list[str], list[str]]:
  """(markdown lines, PNG names) for {(run, method): needle_attention JSON}."""
  lines = [
      "## Attention on the needle", "",
      "Attention of the last prompt position (the one that predicts the answer) on "
      "the asked needle's value tokens +-1 (centre mass), per head, mean over prompts; "
      "chance = uniform attention over the prompt; tail = mass more than "
      "`window` tokens outside the needle sentence.", "",
      "| run | method | length | prompts | centre, mean over heads | best head (layer.head)"
      " | its centre | chance | tail, mean over heads |",
      "|---|---|---|---:|---:|---|---:|---:|---:|"]
  plots = []
  for (run, method), data in needle.items():
    for i, length in enumerate(data["lengths"]):
      centre_LH = np.asarray(data["metrics"]["centre"][i])
      layer, head = np.unravel_index(np.argmax(centre_LH), centre_LH.shape)
      lines.append(
          f"| {run} | {method} | {length} ({_multiple(length, data['train_len'])}) | "
          f"{data['prompts'][i]} | {centre_LH.mean():.4f} | {layer}.{head} | "
          f"{centre_LH.max():.4f} | {data['chance']['centre'][i]:.4f} | "
          f"{np.mean(data['metrics']['tail'][i]):.4f} |")
    plots.append(_plot_needle_heatmap(run, method, data, out_dir))
  if len(needle) > 1:
    plots.append(_plot_needle_best_head(needle, out_dir))
  return lines, plots


def _plot_needle_heatmap(run, method, data, out_dir):
  lengths = data["lengths"]
  grids = [np.asarray(c) for c in data["metrics"]["centre"]]
  layers, heads = grids[0].shape
  figure = Figure(layout="constrained",
                  figsize=(1.5 + (1 + 0.35 * heads) * len(lengths), 1.5 + 0.3 * layers))
  vmax = max(max(g.max() for g in grids), 1e-6)
  for axes, length, grid in zip(np.atleast_1d(figure.subplots(1, len(lengths))),
                                lengths, grids):
    image = axes.imshow(grid, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
    if layers * heads <= 64:
      for (i, j), value in np.ndenumerate(grid):
        axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                  color="white" if value < vmax / 2 else "black")
    axes.set(title=f"{length} ({_multiple(length, data['train_len'])})",
             xlabel="head", ylabel="layer")
  figure.colorbar(image, ax=figure.axes, label="attention mass on the needle value")
  figure.suptitle(f"Needle attention: {run} ({method})")
  name = f"needle_attention_{_slug(f'{run}_{method}')}.png"
  figure.savefig(os.path.join(out_dir, name), dpi=120)
  return name


def _plot_needle_best_head(needle, out_dir):
  """Across runs: the best head's centre mass against the length multiple."""
  figure = Figure(layout="constrained", figsize=(7, 4.5))
  axes = figure.subplots()
  for (run, method), data in needle.items():
    x = [length / data["train_len"] for length in data["lengths"]]
    best = [np.max(c) for c in data["metrics"]["centre"]]
    axes.plot(x, best, marker="o", label=f"{run} ({method})")
  axes.set_xscale("log", base=2)
  axes.set(xlabel="length (x training)", ylabel="best head's mass on the needle",
           title="Needle attention of the best head", ylim=(0, None))
  axes.grid(True, alpha=0.3)
  figure.legend(fontsize=8, loc="outside right upper")
  name = "needle_attention_best_head.png"
  figure.savefig(os.path.join(out_dir, name), dpi=120)
  return name


def nonuniformity_section(runs: dict, out_dir: str) -> tuple[list[str], list[str]]:
  """(markdown lines, PNG names) for {run: nonuniformity_grad JSON}."""
  lines = [
      "## Non-uniformity gradient at initialisation", "",
      "Per layer, the norm of the gradient of the mean attention on the diagonal "
      "(key = query) and off-diagonal (key = query - 1) w.r.t. that layer's q/k "
      "projections, on the same initial weights run with RoPE and with NoPE.", "",
      "| run | layer | RoPE diagonal | NoPE diagonal | RoPE / NoPE | RoPE off-diagonal | "
      "NoPE off-diagonal | RoPE / NoPE |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for run, data in runs.items():
    grads = {(mode, name): data["nonuniformity"][mode][name]["grad_norm"]
             for mode in _MODES for name in _OBJECTIVES}
    for layer in range(data["layers"]):
      cells = []
      for name in _OBJECTIVES:
        rope, nope = grads["rope", name][layer], grads["nope", name][layer]
        ratio = f"{rope / nope:.2f}" if nope > 0 else "-"
        cells += [f"{rope:.3g}", f"{nope:.3g}", ratio]
      lines.append(f"| {run} | {layer} | " + " | ".join(cells) + " |")
  return lines, [_plot_nonuniformity(runs, out_dir)]


def _plot_nonuniformity(runs, out_dir):
  figure = Figure(layout="constrained", figsize=(1 + 5 * len(runs), 5))
  for axes, (run, data) in zip(np.atleast_1d(figure.subplots(1, len(runs))),
                               runs.items()):
    layers = np.arange(data["layers"])
    for mode, colour in zip(_MODES, ("tab:blue", "tab:orange")):
      for name, style in zip(_OBJECTIVES, ("-", "--")):
        axes.plot(layers, data["nonuniformity"][mode][name]["grad_norm"], style,
                  color=colour, marker="o", label=f"{_MODES[mode]}, {_OBJECTIVES[name]}")
    axes.set_yscale("log")
    axes.set_xticks(layers)
    axes.set(title=f"{run} (train length {data['train_len']})", xlabel="layer",
             ylabel="gradient norm w.r.t. q, k")
    axes.grid(True, which="both", alpha=0.3)
  figure.legend(*figure.axes[0].get_legend_handles_labels(), fontsize=8, ncols=2,
                loc="outside lower center")
  figure.suptitle("Gradient towards non-uniform attention at initialisation")
  name = "nonuniformity_grad.png"
  figure.savefig(os.path.join(out_dir, name), dpi=120)
  return name
