"""DIR/report.md for benchmarks/reproduce.py: our grid beside the paper's numbers.

Reads what the public CLIs wrote into each run's workdir (metrics.jsonl, and
eval/*.json from `drope_jax.evaluate`), checks the paper's four claims on our
numbers, and draws the loss curves and the in-context bars. Nothing here decides
what to evaluate: it only reads.

    python -m benchmarks.reproduce_report DIR   # rewrite the report of a grid
"""

import glob
import json
import os
import sys

from matplotlib.figure import Figure

# The paper (Gelberg et al. 2026), from-scratch 0.5B models, 16B tokens.
PAPER_IN_CONTEXT = {"rope": 21.72, "drope": 21.73, "drope_half": 22.42, "nope": 23.77}
PAPER_NIAH_2X = {  # method -> (multi-query, multi-key, multi-value), %.
    "RoPE": (0, 0, 0), "RoPE + PI": (0, 0, 0), "RoPE + NTK": (21.1, 19.4, 16.5),
    "RoPE + YaRN": (17.8, 0.5, 14.6), "NoPE": (9.2, 36.2, 21.4),
    "DroPE": (28.0, 41.6, 23.3)}
PAPER_C = 0.412
VARIANTS = ("single", "multikey", "multiquery", "multivalue")
METHOD_NAMES = {"rope": "as is", "nope": "as is", "pi": "PI", "ntk": "NTK",
                "yarn": "YaRN", "dynamic_ntk": "dynamic NTK",
                "temperature": "temperature"}
RUN_NAMES = {"rope": "RoPE", "nope": "NoPE", "drope": "DroPE (drop at 87.5%)",
             "drope_half": "DroPE (drop at 50%)"}


def write(out: str, runs: list[str], *, steps: int | None = None,
          drop_steps: dict | None = None, scale: str = "",
          controls: list[tuple[str, str]] = ()) -> str:
  evals = {run: _load_evals(os.path.join(out, run)) for run in runs}
  metrics = {run: _load_metrics(os.path.join(out, run)) for run in runs}
  lines = [f"# DroPE reproduction ({scale or 'grid'} scale)", ""]
  if steps:
    drops = ", ".join(f"{RUN_NAMES[r]} at step {s}" for r, s in (drop_steps or {}).items())
    lines += [f"Every run: {steps} steps, same seed, data order and schedule; drops: "
              f"{drops}. Perplexity and NIAH on held-out text only.", ""]
  lines += _training_section(out, metrics, drop_steps or {})
  lines += _in_context_section(out, evals)
  lines += _length_section(evals)
  lines += _niah_section(evals)
  lines += _temperature_section(evals)
  lines += _analyses_section(out, runs)
  lines += _claims_section(evals)
  lines += _controls_section(out, evals, metrics, controls)
  path = os.path.join(out, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


# --- reading ---------------------------------------------------------------------------


def _load_evals(workdir: str) -> dict:
  """{(kind, method): record} from workdir/eval/{perplexity,niah}_<method>.json."""
  found = {}
  for kind in ("perplexity", "niah"):
    for path in glob.glob(os.path.join(workdir, "eval", f"{kind}_*.json")):
      with open(path) as f:
        record = json.load(f)
      found[kind, record["method"]] = record
  temperature = os.path.join(workdir, "eval", "temperature.json")
  if os.path.exists(temperature):
    with open(temperature) as f:
      found["temperature"] = json.load(f)
  return found


def _load_metrics(workdir: str) -> dict:
  """step -> the last logged line of that step (a resume logs some steps again)."""
  by_step = {}
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        record = json.loads(line)
        by_step[record["step"]] = record
  return dict(sorted(by_step.items()))


def _perplexity(evals, method, multiple):
  record = evals.get(("perplexity", method))
  if not record:
    return None
  for length, value in zip(record["lengths"], record["perplexity"]):
    if length == multiple * record["train_len"]:
      return value
  return None


def _niah(evals, method, multiple, variant):
  record = evals.get(("niah", method))
  if not record:
    return None
  train_len = record["train_len"]
  cells = [r for r in record["results"]
           if r["variant"] == variant and r["length"] == multiple * train_len]
  if not cells:
    return None
  trials = sum(c["trials"] for c in cells)
  return 100 * sum(c["success_rate"] * c["trials"] for c in cells) / trials


def _own_method(evals) -> str:
  return "rope" if ("perplexity", "rope") in evals else "nope"


def _fmt(value, digits=2):
  return "n/a" if value is None else f"{value:.{digits}f}"


# --- sections --------------------------------------------------------------------------


def _training_section(out, metrics, drop_steps):
  figure = Figure(figsize=(8, 4.5))
  axes = figure.subplots()
  for run, by_step in metrics.items():
    steps = [s for s, r in by_step.items() if "eval_loss" in r]
    if steps:
      axes.plot(steps, [by_step[s]["eval_loss"] for s in steps], marker="o", ms=3,
                label=RUN_NAMES.get(run, run))
  for run, step in drop_steps.items():
    axes.axvline(step, color="grey", ls=":", lw=1)
  axes.set_xlabel("step")
  axes.set_ylabel("eval loss (held-out split, incl. needle documents)")
  axes.legend()
  axes.grid(alpha=0.3)
  figure.tight_layout()
  figure.savefig(os.path.join(out, "eval_loss.png"), dpi=120)
  lines = ["## Training", "", "| run | final train loss | final eval loss | tokens |",
           "|---|---:|---:|---:|"]
  for run, by_step in metrics.items():
    if not by_step:
      continue
    last = by_step[max(by_step)]
    eval_steps = [s for s, r in by_step.items() if "eval_loss" in r]
    eval_loss = by_step[eval_steps[-1]]["eval_loss"] if eval_steps else None
    lines.append(f"| {RUN_NAMES.get(run, run)} | {last['loss']:.3f} | {_fmt(eval_loss, 3)} "
                 f"| {last['tokens_seen']:,} |")
  return lines + ["", "![eval loss](eval_loss.png)", ""]


def _in_context_section(out, evals):
  lines = ["## (a) In-context perplexity (held-out prose at the training length)", "",
           "| run | ours | ours / RoPE | paper | paper / RoPE |", "|---|---:|---:|---:|---:|"]
  ours = {run: _perplexity(e, _own_method(e), 1) for run, e in evals.items()}
  rope = ours.get("rope")
  for run in ("rope", "drope", "drope_half", "nope"):
    if run not in ours:
      continue
    ratio = ours[run] / rope if ours[run] and rope else None
    paper = PAPER_IN_CONTEXT[run]
    lines.append(f"| {RUN_NAMES[run]} | {_fmt(ours[run])} | {_fmt(ratio, 3)} | {paper} | "
                 f"{paper / PAPER_IN_CONTEXT['rope']:.3f} |")
  figure = Figure(figsize=(6, 3.5))
  axes = figure.subplots()
  names = [r for r in ("rope", "drope", "drope_half", "nope") if ours.get(r)]
  axes.bar([RUN_NAMES[r].replace(" (", "\n(") for r in names], [ours[r] for r in names])
  axes.set_ylabel("perplexity at 1x")
  axes.set_ylim(min(ours[r] for r in names) * 0.95 if names else 0, None)
  figure.tight_layout()
  figure.savefig(os.path.join(out, "in_context.png"), dpi=120)
  return lines + ["", "![in-context perplexity](in_context.png)", ""]


def _length_section(evals):
  lines = ["## (b) Perplexity beyond the training length", "",
           "| run | method | 1x | 2x | 4x | 2x / 1x | 4x / 1x |",
           "|---|---|---:|---:|---:|---:|---:|"]
  for run, e in evals.items():
    for kind, method in sorted(k for k in e if k[0] == "perplexity"):
      p = [_perplexity(e, method, m) for m in (1, 2, 4)]
      ratios = [p[i] / p[0] if p[0] and p[i] else None for i in (1, 2)]
      lines.append(f"| {RUN_NAMES.get(run, run)} | {METHOD_NAMES.get(method, method)} | "
                   + " | ".join(_fmt(v) for v in p) + " | "
                   + " | ".join(_fmt(v, 3) for v in ratios) + " |")
  return lines + ["", "![perplexity vs length](compare/perplexity_vs_length.png)", ""]


def _niah_section(evals):
  lines = ["## (c) Needle in a haystack (success %, held-out haystacks)", ""]
  for multiple in (1, 2, 4):
    lines += [f"### {multiple}x the training length", "",
              "| run | method | " + " | ".join(VARIANTS) + " |",
              "|---|---|" + "---:|" * len(VARIANTS)]
    for run, e in evals.items():
      for kind, method in sorted(k for k in e if k[0] == "niah"):
        cells = [_niah(e, method, multiple, v) for v in VARIANTS]
        lines.append(f"| {RUN_NAMES.get(run, run)} | {METHOD_NAMES.get(method, method)} | "
                     + " | ".join(_fmt(c, 1) for c in cells) + " |")
    lines.append("")
  lines += ["Paper, 0.5B models at 2x (multi-query / multi-key / multi-value): "
            + "; ".join(f"{m} {q} / {k} / {v}" for m, (q, k, v) in PAPER_NIAH_2X.items())
            + ".", "", "![NIAH by variant](compare/niah_by_variant.png)", ""]
  return lines


def _temperature_section(evals):
  lines = ["## (d) Softmax temperature for NoPE models", "",
           "| run | fitted c | ppl 4x as is | ppl 4x with temperature |", "|---|---:|---:|---:|"]
  for run, e in evals.items():
    if "temperature" not in e:
      continue
    lines.append(f"| {RUN_NAMES.get(run, run)} | {e['temperature']['c']:.3f} | "
                 f"{_fmt(_perplexity(e, 'nope', 4))} | "
                 f"{_fmt(_perplexity(e, 'temperature', 4))} |")
  return lines + ["", f"Paper: c = {PAPER_C} for its from-scratch DroPE model.", ""]


def _analyses_section(out, runs):
  """Where the heads look at the needle (best head per run and length), and the
  gradient towards non-uniform attention at initialisation, RoPE vs NoPE."""
  lines, pngs = [], []
  rows = []
  for run in runs:
    for path in sorted(glob.glob(os.path.join(out, run, "eval", "needle_attention_*.json"))):
      with open(path) as f:
        record = json.load(f)
      centre, chance = record["metrics"]["centre"], record["chance"]["centre"]
      best = [max(max(heads) for heads in layers) for layers in centre]
      rows.append(f"| {RUN_NAMES.get(run, run)} | {METHOD_NAMES.get(record['method'], record['method'])} | "
                  + " | ".join(f"{b:.3f} ({b / c:.1f}x)" for b, c in zip(best, chance)) + " |")
    pngs += sorted(glob.glob(os.path.join(out, run, "eval", "needle_attention*.png")))
  if rows:
    lines += ["## Attention on the needle (analysis)", "",
              "Mass that the best head puts within +-1 token of the asked needle's value, "
              "from the last prompt position (the one that starts the answer), averaged over "
              "NIAH prompts (single, multi-key); in brackets, the multiple of what uniform "
              "attention would put there (`drope_jax/eval/needle_attention.py`).", "",
              "| run | method | 1x | 2x | 4x |", "|---|---|---:|---:|---:|", *rows, ""]
  gradient = os.path.join(out, "rope", "eval", "nonuniformity_grad.json")
  if os.path.exists(gradient):
    with open(gradient) as f:
      record = json.load(f)["nonuniformity"]
    lines += ["## Why RoPE trains faster: gradients towards non-uniform attention at init", "",
              "Per layer, the norm of the gradient (w.r.t. that layer's q and k projections) of "
              "the attention mass on the diagonal and on the previous token, on the same "
              "initial weights run with RoPE and with NoPE (`drope_jax/eval/nonuniformity.py`).",
              "", "| layer | diagonal RoPE | NoPE | RoPE / NoPE | previous token RoPE | NoPE | "
              "RoPE / NoPE |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for layer, _ in enumerate(record["rope"]["diagonal"]["grad_norm"]):
      cells = []
      for objective in ("diagonal", "off_diagonal"):
        r = record["rope"][objective]["grad_norm"][layer]
        n = record["nope"][objective]["grad_norm"][layer]
        cells += [f"{r:.4f}", f"{n:.4f}", f"{r / n:.2f}"]
      lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines.append("")
    pngs.append(os.path.join(out, "rope", "eval", "nonuniformity_grad.png"))
  lines += [f"![{os.path.relpath(p, out)}]({os.path.relpath(p, out)})" for p in pngs
            if os.path.exists(p)]
  return lines + ([""] if lines else [])


def _claims_section(evals):
  """Each claim of the issue, checked on our numbers (never tuned to them)."""
  rope, drope, half, nope = (evals.get(r, {}) for r in ("rope", "drope", "drope_half",
                                                          "nope"))
  lines = ["## The paper's claims on our numbers", ""]
  p = {r: _perplexity(e, _own_method(e), 1) for r, e in evals.items()}
  if all(p.get(r) for r in ("rope", "drope", "drope_half", "nope")):
    within = p["drope"] <= 1.01 * p["rope"]
    order = p["drope"] <= p["drope_half"] <= p["nope"]
    lines.append(f"- (a) DroPE within 1% of RoPE in context: **{_yes(within)}** "
                 f"({p['drope']:.2f} vs {p['rope']:.2f}, {100 * (p['drope'] / p['rope'] - 1):+.1f}%); "
                 f"NoPE worse than both: **{_yes(p['nope'] > max(p['rope'], p['drope']))}** "
                 f"({p['nope']:.2f}); drop at 50% between: **{_yes(order)}** ({p['drope_half']:.2f}).")
  rope_growth = [_ratio(rope, "rope", m) for m in (2, 4)]
  drope_growth = [_ratio(drope, "nope", m) for m in (2, 4)]
  if None not in rope_growth + drope_growth:
    lines.append(
        f"- (b) RoPE as is degrades beyond its length: **{_yes(max(rope_growth) > 1.1)}** "
        f"(x{rope_growth[0]:.2f} at 2x, x{rope_growth[1]:.2f} at 4x); DroPE within 10% of "
        f"its 1x perplexity at 2x and 4x: **{_yes(max(drope_growth) <= 1.1)}** "
        f"(x{drope_growth[0]:.2f}, x{drope_growth[1]:.2f}).")
  if "temperature" in drope:
    plain, warm = _perplexity(drope, "nope", 4), _perplexity(drope, "temperature", 4)
    c = drope["temperature"]["c"]
    helps = c > 0 and plain is not None and warm is not None and warm < plain
    lines.append(f"- (d) Fitted c > 0 helps DroPE at 4x: **{_yes(helps)}** (c = {c:.3f}; "
                 f"perplexity {_fmt(plain)} as is, {_fmt(warm)} with the temperature).")
  in_length = [_niah(e, key[1], 1, v) for e in evals.values() for key in e
               if key[0] == "niah" for v in VARIANTS]
  in_length = [v for v in in_length if v is not None]
  if in_length and max(in_length) < 5:
    lines.append(
        f"- (c) cannot be tested at this scale: no model retrieves needles even at its "
        f"training length (best success at 1x: {max(in_length):.1f}%), so success at 2x "
        "says nothing about length generalisation.")
    return lines + [""]
  d_mk = _niah(drope, "nope", 2, "multikey")
  scaled = {m: _niah(rope, m, 2, "multikey") for m in ("pi", "ntk", "yarn", "dynamic_ntk")}
  scaled = {m: v for m, v in scaled.items() if v is not None}
  r_mk = _niah(rope, "rope", 2, "multikey")
  if d_mk is not None and scaled and r_mk is not None:
    best = max(scaled, key=scaled.get)
    lines.append(
        f"- (c) NIAH multi-key at 2x: DroPE {d_mk:.1f}% vs the best RoPE scaling "
        f"({METHOD_NAMES[best]}) {scaled[best]:.1f}%: **{_yes(d_mk > scaled[best])}**; "
        f"RoPE as is {r_mk:.1f}% (near 0: **{_yes(r_mk <= 5)}**).")
  return lines + [""]


def _controls_section(out, evals, metrics, controls):
  """Single changes to DroPE at 87.5%, beside it and RoPE."""
  rows = [(run, RUN_NAMES[run], evals.get(run, {}), metrics.get(run, {}))
          for run in ("rope", "drope")]
  for name, change in controls:
    workdir = os.path.join(out, name)
    if os.path.isdir(workdir):
      rows.append((name, change, _load_evals(workdir), _load_metrics(workdir)))
  if len(rows) == 2:
    return []
  rope_ppl = _perplexity(rows[0][2], "rope", 1)
  lines = ["## Controlled runs: one change each from DroPE at 87.5%", "",
           "| run | change | final eval loss | ppl 1x | / RoPE | 2x / 1x | 4x / 1x |",
           "|---|---|---:|---:|---:|---:|---:|"]
  for name, change, e, by_step in rows:
    eval_steps = [s for s, r in by_step.items() if "eval_loss" in r]
    loss = by_step[eval_steps[-1]]["eval_loss"] if eval_steps else None
    method = _own_method(e)
    ppl = _perplexity(e, method, 1)
    ratio = ppl / rope_ppl if ppl and rope_ppl else None
    lines.append(f"| {name} | {change} | {_fmt(loss, 3)} | {_fmt(ppl)} | {_fmt(ratio, 3)} | "
                 f"{_fmt(_ratio(e, method, 2), 3)} | {_fmt(_ratio(e, method, 4), 3)} |")
  return lines + [""]


def _ratio(evals, method, multiple):
  one, other = _perplexity(evals, method, 1), _perplexity(evals, method, multiple)
  return other / one if one and other else None


def _yes(flag: bool) -> str:
  return "holds" if flag else "does not hold"


if __name__ == "__main__":
  grid = os.path.abspath(sys.argv[1])
  names = [r for r in RUN_NAMES if os.path.isdir(os.path.join(grid, r))]
  print(write(grid, names))
