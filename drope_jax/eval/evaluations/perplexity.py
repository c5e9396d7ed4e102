"""`--evals=perplexity`: perplexity_<method>.json, perplexity against context length.

Every method at every length scores the same held-out text (--eval_tokens of it), with
the mean loss per position bucket (drope_jax/eval/perplexity.py). Each window starts as
the model's texts do (drope_jax/data/framing.py).
"""

import time

from drope_jax.data import framing
from drope_jax.eval import api
from drope_jax.eval import heldout
from drope_jax.eval import methods
from drope_jax.eval import perplexity
from drope_jax.eval import results


class Perplexity:
  name = "perplexity"

  def run(self, ctx: api.Context) -> None:
    run, options, stream = ctx.run, ctx.options, ctx.heldout_tokens
    edges = perplexity.bucket_edges(run.train_len, ctx.lengths[-1])
    prefix = framing.window_prefix(run.framing, run.tokenizer())
    scored = {}  # methods that coincide at a length (all of them at 1x) score it once.
    for method in ctx.methods:
      scores, kernels = [], []
      for length in ctx.lengths:
        kernel = methods.attention_for(run.config.model.attention, length,
                                       options.attention)
        positional = method.positional(length, run.train_len)
        started = time.perf_counter()
        key = (positional, kernel, length)
        if key not in scored:
          windows = heldout.windows(stream, length,
                                    max(1, (len(stream) - 1) // length), prefix)
          scored[key] = perplexity.evaluate(
              run.graphdef(kernel), run.params, windows, positional=positional,
              mesh=run.mesh, batch_size=methods.rows_for(run, length, options.batch_tokens),
              progress=ctx.say)
        score = scored[key]
        ctx.say(f"perplexity {method.name:>11} length {length:>6} ({kernel}): "
                f"{score.perplexity:9.3f} over {score.tokens} tokens "
                f"({time.perf_counter() - started:.0f}s)")
        scores.append(score)
        kernels.append(kernel)
      path = results.write(run, self.name, method, dict(
          lengths=ctx.lengths, perplexity=[s.perplexity for s in scores],
          loss=[s.loss for s in scores], tokens=[s.tokens for s in scores],
          attention=kernels, position_buckets=dict(edges=edges, loss={
              str(s.length): s.bucket_losses(edges) for s in scores})))
      ctx.say(f"wrote {path}")
