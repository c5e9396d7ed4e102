"""`--evals=recall|copy|induction`: <task>_<method>.json, synthetic-task accuracy.

At every length, `--task_docs` fresh documents of the task (drope_jax/data/tasks) drawn
from `--seed`'s evaluation stream with the run's own task settings, so every run and
method scores the same documents; each answer is the model's argmax next token
(drope_jax/eval/task_scores.py). Also accuracy by the answer's distance to its cue, in
buckets of a quarter of the training length.
"""

import time

from drope_jax.data import tasks
from drope_jax.eval import api
from drope_jax.eval import methods
from drope_jax.eval import perplexity
from drope_jax.eval import results
from drope_jax.eval import task_scores
from drope_jax.eval.errors import EvalError


class TaskAccuracy:

  def __init__(self, name: str):
    self.name = name

  def run(self, ctx: api.Context) -> None:
    run, options = ctx.run, ctx.options
    params = task_params(run)
    for length in ctx.lengths:
      try:
        tasks.check(self.name, params, length)
      except tasks.TaskError as e:
        raise EvalError(f"{e}: evaluate other --lengths") from e
    tokenizer = run.tokenizer()
    documents = {length: tasks.documents(self.name, params, tokenizer, length=length,
                                         seed=options.seed, count=options.task_docs)
                 for length in ctx.lengths}
    edges = perplexity.bucket_edges(run.train_len, ctx.lengths[-1] + 1)
    scored = {}  # methods that coincide at a length (all of them at 1x) score it once.
    for method in ctx.methods:
      scores = []
      for length in ctx.lengths:
        kernel = methods.attention_for(run.config.model.attention, length,
                                       options.attention)
        positional = method.positional(length, run.train_len)
        started = time.perf_counter()
        key = (positional, kernel, length)
        if key not in scored:
          predict_fn = task_scores.make_predict_fn(run.graphdef(kernel), positional)
          scored[key] = task_scores.score(
              predict_fn, run.params, documents[length], mesh=run.mesh,
              batch_size=methods.rows_for(run, length, options.batch_tokens))
        score = scored[key]
        ctx.say(f"{self.name} {method.name:>11} length {length:>6} ({kernel}): accuracy "
                f"{score.accuracy:.4f} over {len(score.correct)} answers "
                f"({time.perf_counter() - started:.0f}s)")
        scores.append(score)
      path = results.write(run, self.name, method, dict(
          lengths=list(ctx.lengths), accuracy=[s.accuracy for s in scores],
          answers=[len(s.correct) for s in scores], documents=options.task_docs,
          seed=options.seed, task=dict(vars(params)),
          by_distance={str(length): s.by_distance(edges)
                       for length, s in zip(ctx.lengths, scores)}))
      ctx.say(f"wrote {path}")


def task_params(run) -> tasks.Params:
  """The run's own task settings (its config's data.task; defaults for runs that
  trained on none)."""
  return tasks.Params.from_config(run.config.data.get("task") or {})
