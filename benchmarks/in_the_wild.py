r"""The paper's in-the-wild DroPE workflow on a real pretrained model, end to end.

  python -m benchmarks.in_the_wild --out=DIR [--steps=20] [--seq_len=512] \
      [--gguf=../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf] \
      [--corpus=../shared/corpus/nltk.jsonl.gz]   (../shared: next to the repository)
  python -m benchmarks.in_the_wild --context=native --out=DIR \
      [--eval_data=../shared/corpus/books.jsonl.gz]

--context=native evaluates the imported model at its own context and 2x, beside
transformers on the same windows (benchmarks/in_the_wild_native.py). The default,
--context=proxy, runs the whole workflow at a short proxy length, every stage a public
command run as a subprocess:
  1. import     python -m drope_jax.hf import --hf=MODEL.gguf --workdir=DIR/base
  2. data       python -m drope_jax.data.prepare (the imported tokenizer)
  3. re-base    python -m drope_jax.train: one step at lr 0 from DIR/base with
                train.seq_len=--seq_len, i.e. the same weights as a run whose training
                length is --seq_len (evaluation lengths and RoPE scaling factors are
                multiples of a run's train.seq_len); its step time is the budget's unit.
  4. evaluate   python -m drope_jax.evaluate --lengths=1,2: perplexity and NIAH, RoPE as
                is and with PI / NTK / YaRN.
  5. DroPE      python -m drope_jax.train --config.checkpoint.init_from=DIR/base
                --config.model.pos_emb=nope --config.model.qk_norm=q (fresh AdamW).
  6. evaluate   the recalibrated NoPE model, same lengths.
  7. export     python -m drope_jax.hf export, then transformers (trust_remote_code)
                must reproduce the exported model's logits.
DIR/report.md gets the tables; DIR/logs/ every command's output.

The proxy is the paper's setting sized for a 2-core CPU: SmolLM2-135M was trained
at 8,192 tokens and extrapolates to 16K; here its "training length" is --seq_len (512) and
2x is 1,024 tokens, well inside what the model has seen, so RoPE is not stressed past its
context and the scalings PI/NTK/YaRN only distort it. The paper recalibrates for
30K+ steps of 1M tokens; --steps of a few thousand tokens show the drop and the start of
the recovery, not the recovered model.
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks import in_the_wild_native

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
METHODS = ("rope", "pi", "ntk", "yarn")


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True,
                      help="output directory; an interrupted run's finishes it")
  parser.add_argument("--gguf", default=os.path.join(
      SHARED, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
  parser.add_argument("--corpus", default=os.path.join(SHARED, "corpus", "nltk.jsonl.gz"))
  parser.add_argument("--seq_len", type=int, default=512, help="the proxy training length")
  parser.add_argument("--batch_size", type=int, default=4, help="sequences per step")
  parser.add_argument("--steps", type=int, default=20, help="recalibration steps")
  parser.add_argument("--lr", type=float, default=3e-4, help="recalibration peak lr")
  parser.add_argument("--warmup", type=int, default=None, help="default: steps // 4")
  parser.add_argument("--eval_tokens", type=int, default=4096,
                      help="held-out tokens scored per length")
  parser.add_argument("--niah_trials", type=int, default=2)
  parser.add_argument("--context", choices=("proxy", "native"), default="proxy",
                      help="proxy: the workflow at --seq_len; native: evaluation only, "
                      "at the model's own context and 2x, beside transformers")
  parser.add_argument("--eval_data", default=os.path.join(SHARED, "corpus", "books.jsonl.gz"),
                      help="--context=native: held-out text (its first book is a novel)")
  parser.add_argument("--niah_methods", default="none,yarn",
                      help="--context=native: NIAH's methods (each 2x prompt is minutes)")
  return parser.parse_args()


class Runner:
  """Runs `python -m ...` stages in the repository, each logged to DIR/logs/.

  A stage whose output already exists is skipped, so rerunning on the same --out
  finishes an interrupted run; stage times persist in DIR/logs/seconds.json.
  """

  def __init__(self, out: str):
    self.logs = os.path.join(out, "logs")
    os.makedirs(self.logs, exist_ok=True)
    self._times = os.path.join(self.logs, "seconds.json")
    self.seconds = {}
    if os.path.exists(self._times):
      with open(self._times) as f:
        self.seconds = json.load(f)

  def __call__(self, name: str, output: str, module: str, *args: str) -> None:
    if os.path.exists(output):
      print(f"[{name}] done before ({output} exists)", flush=True)
      return
    command = [sys.executable, "-m", module, *args]
    print(f"[{name}] {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    with open(os.path.join(self.logs, f"{name}.log"), "w") as f:
      f.write(f"$ {' '.join(command)}\n{done.stdout}\n{done.stderr}")
    if done.returncode:
      sys.exit(f"[{name}] failed with exit code {done.returncode}:\n{done.stderr[-3000:]}")
    self.seconds[name] = time.perf_counter() - started
    with open(self._times, "w") as f:
      json.dump(self.seconds, f)
    print(f"[{name}] {self.seconds[name]:.0f} s", flush=True)


def _metrics(workdir: str) -> list[dict]:
  by_step = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      by_step[record["step"]] = record  # after a resume, the last line of a step wins.
  return [by_step[s] for s in sorted(by_step)]


def _eval_json(workdir: str, kind: str, method: str) -> dict | None:
  path = os.path.join(workdir, "eval", f"{kind}_{method}.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _train_flags(args, base: str, workdir: str, data: str, steps: int) -> list[str]:
  return [f"--config={base}/config.py", f"--workdir={workdir}",
          f"--config.checkpoint.init_from={base}",
          f"--config.train.seq_len={args.seq_len}",
          f"--config.train.batch_size={args.batch_size}",
          f"--config.train.steps={steps}",
          f"--config.checkpoint.every_steps={steps}",
          "--config.train.log_every=1", f"--config.train.eval_every={steps}",
          "--config.train.eval_batches=2",
          "--config.data.source=shards", f"--config.data.paths={data}",
          "--config.data.num_workers=0"]


def _eval_flags(args, workdir: str, methods: str) -> list[str]:
  return [f"--workdir={workdir}", "--lengths=1,2", f"--methods={methods}",
          f"--eval_tokens={args.eval_tokens}", f"--batch_tokens={2 * args.seq_len}",
          f"--niah_trials={args.niah_trials}", "--niah_depths=0,0.5,1",
          "--niah_variants=single"]


def _export_check(workdir: str, export_dir: str, seq_len: int) -> dict:
  """Max |logit difference| between drope_jax and transformers on the exported model."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from drope_jax.eval import loading  # pylint: disable=g-import-not-at-top
  run = loading.load_run(workdir)
  tokens_BS = np.random.default_rng(0).integers(0, run.config.model.vocab_size, (1, seq_len))
  ours = np.asarray(run.model()(tokens_BS, positional=run.positional()))
  model = transformers.AutoModelForCausalLM.from_pretrained(
      export_dir, trust_remote_code=True, dtype=torch.float32)
  with torch.no_grad():
    theirs = model(torch.as_tensor(tokens_BS)).logits.numpy()
  return dict(max_abs_diff=float(np.abs(ours - theirs).max()),
              max_abs_logit=float(np.abs(theirs).max()), tokens=seq_len)


def _perplexity_table(rows: list[tuple[str, dict | None]]) -> list[str]:
  lines = ["| model | method | 1x | 2x |", "|---|---|---:|---:|"]
  for label, result in rows:
    if result is None:
      continue
    ppl = " | ".join(f"{p:.2f}" for p in result["perplexity"])
    lines.append(f"| {label} | {result['method']} | {ppl} |")
  return lines


def _niah_table(rows: list[tuple[str, dict | None]], lengths: list[int]) -> list[str]:
  lines = ["| model | method | 1x | 2x |", "|---|---|---:|---:|"]
  for label, result in rows:
    if result is None:
      continue
    cells = []
    for length in lengths:
      hits = [r for r in result["results"] if r["length"] == length]
      trials = sum(r["trials"] for r in hits)
      rate = sum(r["success_rate"] * r["trials"] for r in hits) / max(trials, 1)
      cells.append(f"{100 * rate:.0f}% ({trials})")
    lines.append(f"| {label} | {result['method']} | {' | '.join(cells)} |")
  return lines


def main():
  args = _parse_args()
  out = os.path.abspath(args.out)
  inputs = (("--gguf", args.gguf),
            ("--eval_data", args.eval_data) if args.context == "native"
            else ("--corpus", args.corpus))
  for flag, path in inputs:
    if not os.path.exists(path):
      sys.exit(f"{flag}={path} does not exist: pass the file's path")
  warmup = args.steps // 4 if args.warmup is None else args.warmup
  base, rebased, drope = (os.path.join(out, n) for n in ("base", "base_rebased", "drope"))
  data, export = os.path.join(out, "data"), os.path.join(out, "export")
  run = Runner(out)

  ckpt = lambda workdir, step: os.path.join(workdir, "checkpoints", str(step))
  evaluated = lambda workdir: os.path.join(workdir, "eval", "report.md")
  run("import", ckpt(base, 0),
      "drope_jax.hf", "import", f"--hf={args.gguf}", f"--workdir={base}")
  if args.context == "native":
    _write_report(out, in_the_wild_native.run(args, out, run))
    return
  run("prepare", os.path.join(data, "manifest.json"),
      "drope_jax.data.prepare", f"--input={args.corpus}", f"--output={data}",
      f"--tokenizer=hf:{base}/hf/tokenizer.json", "--workers=2")
  run("rebase", ckpt(rebased, 1),
      "drope_jax.train", *_train_flags(args, base, rebased, data, 1),
      "--config.train.lr=0", "--config.train.warmup_steps=0")
  run("eval_base", evaluated(rebased),
      "drope_jax.evaluate", *_eval_flags(args, rebased, "none,pi,ntk,yarn"))
  run("drope", ckpt(drope, args.steps),
      "drope_jax.train", *_train_flags(args, base, drope, data, args.steps),
      "--config.model.pos_emb=nope", "--config.model.qk_norm=q",
      f"--config.train.lr={args.lr}", f"--config.train.warmup_steps={warmup}")
  run("eval_drope", evaluated(drope),
      "drope_jax.evaluate", *_eval_flags(args, drope, "none"))
  run("export", os.path.join(export, "config.json"),
      "drope_jax.hf", "export", f"--workdir={drope}", f"--out={export}", "--dtype=float32")
  check = _export_check(drope, export, args.seq_len)

  base_metrics, drope_metrics = _metrics(rebased), _metrics(drope)
  tokens_per_step = args.batch_size * args.seq_len
  rope_loss = base_metrics[0]["loss"]
  seconds = collections.defaultdict(lambda: float("nan"), run.seconds)
  steady = [m["tokens_per_sec"] for m in drope_metrics[1:]] or [float("nan")]
  step_s = tokens_per_step / float(np.mean(steady))
  lengths = [args.seq_len, 2 * args.seq_len]
  base_rows = [("SmolLM2-135M (RoPE)", _eval_json(rebased, "perplexity", m))
               for m in METHODS]
  drope_rows = [(f"DroPE, {args.steps} steps", _eval_json(drope, "perplexity", "nope"))]
  niah_rows = ([("SmolLM2-135M (RoPE)", _eval_json(rebased, "niah", m)) for m in METHODS]
               + [(f"DroPE, {args.steps} steps", _eval_json(drope, "niah", "nope"))])
  context = in_the_wild_native.context_of(base)
  setting = (
      f"**Proxy.** SmolLM2 was trained at {context:,} tokens; this run evaluates at a "
      f"\"training length\" of {args.seq_len} (1x) and {2 * args.seq_len} (2x), both inside "
      "the model's real context, so RoPE is not stressed past its context here and PI / "
      "NTK / YaRN (factor 2) only distort a model that did not need them."
      if args.seq_len < context else
      f"**At the model's own context** ({context:,} tokens, 2x = {2 * context:,}).")
  report = [
      f"# In-the-wild DroPE on SmolLM2-135M (GGUF, Q4_1), "
      f"{'proxy' if args.seq_len < context else 'native'} length {args.seq_len}", "",
      f"Model: `{args.gguf}`, imported with `python -m drope_jax.hf import`. "
      f"Data: `{args.corpus}`, tokenized with the imported tokenizer.", "",
      f"{setting} The recalibration is {args.steps} steps of {tokens_per_step:,} tokens "
      f"({args.steps * tokens_per_step:,} tokens; the paper uses 30K+ steps of 1M tokens): "
      "it shows the loss at the drop and the start of its recovery, not a recovered "
      "model.", "",
      "## Perplexity (held-out split)", "",
      *_perplexity_table(base_rows + drope_rows), "",
      "## NIAH (single needle, depths 0 / 0.5 / 1, success (trials))", "",
      *_niah_table(niah_rows, lengths), "",
      "## Recalibration (DroPE + QK-norm on q, fresh AdamW, "
      f"lr {args.lr:g}, warmup {warmup}, cosine)", "",
      f"- RoPE model's loss on the first batch: {rope_loss:.3f}",
      f"- the same batch right after dropping RoPE (step 0, before any update): "
      f"{drope_metrics[0]['loss']:.3f}",
      f"- after {args.steps} steps: {drope_metrics[-1]['loss']:.3f}",
      f"- step time after the first (compiling) step: {step_s:.1f} s "
      f"({tokens_per_step / step_s:.0f} tokens/s); wall time {seconds['drope']:.0f} s for "
      f"{args.steps} steps with start-up and compilation (the 1-step re-base run: "
      f"{seconds['rebase']:.0f} s)", "",
      "| step | loss | lr | grad norm |", "|---:|---:|---:|---:|",
      *(f"| {m['step']} | {m['loss']:.3f} | {m['lr']:.2e} | {m['grad_norm']:.2f} |"
        for m in drope_metrics), "",
      "## Export", "",
      f"`python -m drope_jax.hf export` wrote `{export}`; transformers "
      "(`trust_remote_code=True`) on it vs drope_jax on the checkpoint, "
      f"{check['tokens']} random tokens: max |logit difference| {check['max_abs_diff']:.2e} "
      f"(max |logit| {check['max_abs_logit']:.1f}).", "",
      "## Wall time per stage (s)", "",
      "| " + " | ".join(run.seconds) + " |", "|" + "---:|" * len(run.seconds),
      "| " + " | ".join(f"{t:.0f}" for t in run.seconds.values()) + " |", "",
  ]
  _write_report(out, report)


def _write_report(out: str, lines: list[str]) -> None:
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  main()
