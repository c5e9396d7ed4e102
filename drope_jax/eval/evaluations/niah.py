"""`--evals=niah`: niah_<method>.json, needle-in-a-haystack success rates.

The --niah_variants x --niah_depths x --niah_trials grid at every length, answers
decoded greedily (drope_jax/eval/niah_runner.py).
"""

from drope_jax.eval import api
from drope_jax.eval import methods
from drope_jax.eval import niah_runner
from drope_jax.eval import results
from drope_jax.eval.errors import EvalError


class Niah:
  name = "niah"

  def run(self, ctx: api.Context) -> None:
    run, options, haystack = ctx.run, ctx.options, ctx.haystack
    variants, depths = options.niah_variants, options.niah_depths
    trials = options.niah_trials
    tokenizer = run.tokenizer()
    graphdef = run.graphdef()
    scored = {}  # methods that coincide at a length (all of them at 1x) score it once.
    for method in ctx.methods:
      ctx.say(f"niah {method.name}: {len(variants)} variants x {len(depths)} depths x "
              f"{trials} trials at lengths {', '.join(map(str, ctx.lengths))}")
      cells = []
      for length in ctx.lengths:  # each length's prompts depend on it and the seed only.
        positional = method.positional(length, run.train_len)
        if (positional, length) not in scored:
          scored[positional, length] = niah_runner.run(
              graphdef, run.params, tokenizer=tokenizer, haystack=haystack,
              lengths=[length], variants=variants, depths=depths, trials=trials,
              positional_for=lambda _, p=positional: p,
              rows_for=lambda n: methods.rows_for(run, n, options.batch_tokens),
              seed=options.seed, vocab_limit=tokenizer.vocab_size, framing=run.framing,
              progress=ctx.say)
        cells += scored[positional, length]
      if not cells:
        raise no_prompt_fits(ctx.lengths)
      path = results.write(run, self.name, method,
                           dict(results=cells, seed=options.seed))
      ctx.say(f"wrote {path}")


def no_prompt_fits(lengths) -> EvalError:
  """Every variant was too long for every length: nothing to evaluate."""
  return EvalError(f"no NIAH prompt fits lengths {', '.join(map(str, lengths))}: "
                   "evaluate longer lengths or fewer needles (--niah_variants)")
