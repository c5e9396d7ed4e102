"""`benchmarks/in_the_wild.py --context=native`: the imported model at its own context.

SmolLM2-135M was trained at 8,192 tokens, so 1x is 8K and 2x is 16K, where RoPE as is
breaks. Stages (public commands, skipped when their output exists, as in the proxy):
  ppl_<method>  python -m drope_jax.evaluate --evals=perplexity on the imported run, one
                call per method so each gets its own CPU time: RoPE as is at 1x and 2x,
                PI / NTK / YaRN at 2x (at 1x every scaling is RoPE as is).
  niah          python -m drope_jax.evaluate --evals=niah, a few prompts per length.
  transformers  the source model in transformers (loaded from the same GGUF, sdpa, fp32)
                on the same token windows, the same loss (mean cross-entropy of every
                target): RoPE as is, PI (linear), NTK (transformers' dynamic type with
                factor 1 is static NTK at a 2x window) and YaRN.
DIR/report.md gets one table (drope_jax beside transformers, with the seconds of each),
the NIAH table and DIR/loss_by_position.png.
"""

import json
import os
import time

import numpy as np

# drope_jax's method -> transformers' rope_parameters at 2x (None: RoPE as is).
HF_ROPE = {"rope": None,
           "pi": dict(rope_type="linear", factor=2.0),
           "ntk": dict(rope_type="dynamic", factor=1.0),
           "yarn": dict(rope_type="yarn", factor=2.0)}
METHODS = tuple(HF_ROPE)


def run(args, out: str, runner) -> list[str]:
  """Runs the native stages; returns the report's lines."""
  base = os.path.join(out, "base")
  context = context_of(base)
  evaluated = lambda kind, method: os.path.join(base, "eval", f"{kind}_{method}.json")
  common = [f"--workdir={base}", f"--eval_data={args.eval_data}",
            f"--eval_tokens={2 * context}", f"--batch_tokens={context}"]
  for method in METHODS:
    lengths = "1,2" if method == "rope" else "2"
    runner(f"ppl_{method}", evaluated("perplexity", method), "drope_jax.evaluate",
           *common, "--evals=perplexity", f"--lengths={lengths}",
           f"--methods={'none' if method == 'rope' else method}")
  runner("niah", evaluated("niah", "rope"), "drope_jax.evaluate", *common,
         "--evals=niah", "--lengths=1,2", f"--methods={args.niah_methods}",
         f"--niah_trials={args.niah_trials}", "--niah_depths=0.5",
         "--niah_variants=single")
  reference_path = os.path.join(out, "transformers.json")
  if not os.path.exists(reference_path):
    print("[transformers] the source model on the same windows", flush=True)
    with open(reference_path, "w") as f:
      json.dump(transformers_reference(args.gguf, base, args.eval_data), f, indent=1)
  with open(reference_path) as f:
    reference = json.load(f)
  ours = {m: _read(evaluated("perplexity", m)) for m in METHODS}
  _plot_loss_by_position(ours, context, os.path.join(out, "loss_by_position.png"))
  niah = {m: _read(evaluated("niah", m)) for m in METHODS}
  return _report(args, context, ours, reference, niah, runner.seconds)


def context_of(base: str) -> int:
  """The imported model's own context: train.seq_len of the run `hf import` wrote."""
  with open(os.path.join(base, "config.json")) as f:
    return json.load(f)["train"]["seq_len"]


def _read(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def transformers_reference(gguf: str, base: str, eval_data: str,
                           methods=METHODS) -> dict:
  """Perplexity of transformers' model (loaded from `gguf`) on the windows drope_jax's
  `evaluate` scores for the imported run `base`, per method (of HF_ROPE) and length."""
  # pylint: disable=g-import-not-at-top
  import torch
  import transformers
  from drope_jax.data import framing
  from drope_jax.eval import heldout
  from drope_jax.eval import loading
  # pylint: enable=g-import-not-at-top
  run = loading.load_run(base)
  context = run.train_len
  stream = heldout.token_stream(run.config, 2 * context + 1, eval_data=eval_data)
  prefix = framing.window_prefix(run.framing, run.tokenizer())
  started = time.perf_counter()
  model = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
      dtype=torch.float32, attn_implementation="sdpa").eval()
  result = dict(load_seconds=time.perf_counter() - started, torch=torch.__version__,
                transformers=transformers.__version__, threads=torch.get_num_threads())
  theta = model.config.rope_parameters["rope_theta"]
  for method in methods:
    scaling = HF_ROPE[method]
    scaled = dict(scaling or dict(rope_type="default"), rope_theta=theta)
    if scaling is not None:
      scaled["original_max_position_embeddings"] = context
    model.config.rope_parameters = scaled
    model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)
    for length in ((context, 2 * context) if scaling is None else (2 * context,)):
      windows = heldout.windows(stream, length, max(1, (len(stream) - 1) // length), prefix)
      started, total, count = time.perf_counter(), 0.0, 0
      with torch.no_grad():
        for window in torch.as_tensor(windows, dtype=torch.long):
          logits = model(window[None, :-1]).logits[0]
          total += float(torch.nn.functional.cross_entropy(
              logits, window[1:], reduction="sum"))
          count += len(window) - 1
      result[f"{method}@{length}"] = dict(
          perplexity=float(np.exp(total / count)), tokens=count,
          seconds=time.perf_counter() - started)
      print(f"  transformers {method:>5} length {length}: "
            f"{result[f'{method}@{length}']['perplexity']:.3f}", flush=True)
  return result


def _plot_loss_by_position(ours: dict, context: int, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4))
  for method, result in ours.items():
    if result is None:
      continue
    buckets = result["position_buckets"]
    edges, losses = buckets["edges"], buckets["loss"][str(2 * context)]
    starts = [e for e, loss in zip(edges, losses) if loss is not None]
    ax.plot(starts, [l for l in losses if l is not None], marker="o", label=method)
  ax.axvline(context, color="gray", linestyle=":", label="trained context")
  ax.set(xlabel="position in the 2x window (bucket start)", ylabel="mean loss (nats)",
         title="SmolLM2-135M at 2x its context: loss by position")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _report(args, context, ours, reference, niah, seconds) -> list[str]:
  lengths = (context, 2 * context)
  lines = [
      f"# SmolLM2-135M (GGUF, Q4_1) at its own context: {context:,} (1x) and "
      f"{2 * context:,} (2x) tokens", "",
      f"Held-out text: the first {2 * context:,} tokens of `{args.eval_data}`, in windows "
      "of each length (every token predicted once). transformers "
      f"{reference['transformers']} (torch {reference['torch']}, "
      f"{reference['threads']} threads, sdpa, float32), loaded from the same GGUF, scores "
      "the same token windows. At 1x every scaling is RoPE as is and is scored once. "
      "Seconds: drope_jax's are whole `evaluate` commands (start-up, load, compile, "
      "scoring); transformers' are the scoring only (its load: "
      f"{reference['load_seconds']:.0f} s).", "",
      "| method | drope_jax 1x | transformers 1x | drope_jax 2x | transformers 2x | "
      "drope_jax s | transformers s |", "|---|---:|---:|---:|---:|---:|---:|"]
  for method in METHODS:
    if ours[method] is None:
      continue
    by_length = dict(zip(ours[method]["lengths"], ours[method]["perplexity"]))
    cells, hf_seconds = [], 0.0
    for length in lengths:
      theirs = reference.get(f"{method}@{length}")
      hf_seconds += theirs["seconds"] if theirs else 0.0
      cells += [f"{by_length[length]:.2f}" if length in by_length else "= RoPE",
                f"{theirs['perplexity']:.2f}" if theirs else "= RoPE"]
    lines.append(f"| {method} | {' | '.join(cells)} | "
                 f"{seconds.get(f'ppl_{method}', float('nan')):.0f} | {hf_seconds:.0f} |")
  lines += ["", "![loss by position](loss_by_position.png)", "",
            f"## NIAH (single needle at depth 0.5, {args.niah_trials} prompts per cell; "
            f"{seconds.get('niah', float('nan')):.0f} s)", "",
            "| method | 1x | 2x |", "|---|---:|---:|"]
  for method, result in niah.items():
    if result is None:
      continue
    cells = []
    for length in lengths:
      hits = [r for r in result["results"] if r["length"] == length]
      trials = sum(r["trials"] for r in hits)
      rate = sum(r["success_rate"] * r["trials"] for r in hits) / max(trials, 1)
      cells.append(f"{100 * rate:.0f}% ({trials})")
    lines.append(f"| {method} | {' | '.join(cells)} |")
  return lines + [""]
