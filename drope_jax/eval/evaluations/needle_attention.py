"""`--evals=needle_attention`: needle_attention_<method>.json, where heads look.

Per layer and head, the attention on the needle at the last position of the NIAH
prompts (the --niah_* flags choose them; drope_jax/eval/needle_attention.py).
"""

from drope_jax.eval import api
from drope_jax.eval import methods
from drope_jax.eval import needle_attention
from drope_jax.eval import results
from drope_jax.eval.evaluations import niah


class NeedleAttention:
  name = "needle_attention"

  def run(self, ctx: api.Context) -> None:
    run, options, haystack = ctx.run, ctx.options, ctx.haystack
    variants, depths = options.niah_variants, options.niah_depths
    trials = options.niah_trials
    tokenizer = run.tokenizer()
    for method in ctx.methods:
      ctx.say(f"needle attention {method.name}: {len(variants)} variants x "
              f"{len(depths)} depths x {trials} trials at lengths "
              f"{', '.join(map(str, ctx.lengths))}")
      data = needle_attention.run(
          lambda length: run.graphdef(methods.attention_for(
              run.config.model.attention, length, options.attention)),
          run.params, tokenizer=tokenizer, haystack=haystack, lengths=ctx.lengths,
          variants=variants, depths=depths, trials=trials,
          positional_for=lambda length, m=method: m.positional(length, run.train_len),
          rows_for=lambda length: methods.rows_for(run, length, options.batch_tokens),
          mesh=run.mesh, seed=options.seed, framing=run.framing, progress=ctx.say)
      if not data["lengths"]:
        raise niah.no_prompt_fits(ctx.lengths)
      cfg = run.model_config
      path = results.write(run, self.name, method, dict(
          data, layers=cfg.n_layers, heads=cfg.n_heads, variants=list(variants),
          depths=list(depths), trials=trials, seed=options.seed))
      ctx.say(f"wrote {path}")
