"""`--evals=nonuniformity_grad`: nonuniformity_grad.json, RoPE vs NoPE at initialisation.

The gradient towards non-uniform attention (drope_jax/eval/nonuniformity.py) at the
run's initial weights (its config and seed), on --nonuniformity_rows held-out windows
of train.seq_len. It depends on neither the checkpoint's methods nor --lengths.
"""

from drope_jax import optim
from drope_jax import train_step
from drope_jax.eval import api
from drope_jax.eval import heldout
from drope_jax.eval import loading
from drope_jax.eval import methods
from drope_jax.eval import nonuniformity
from drope_jax.eval import results
from drope_jax.eval.errors import EvalError
from drope_jax.model.positional import Positional


class NonuniformityGrad:
  name = "nonuniformity_grad"

  def run(self, ctx: api.Context) -> None:
    run, options = ctx.run, ctx.options
    multiple = loading.batch_multiple(run.mesh)
    rows = -(-options.nonuniformity_rows // multiple) * multiple
    stream = heldout.token_stream(run.config, rows * run.train_len + 1,
                                  eval_data=options.eval_data,
                                  text_field=options.text_field)
    windows = heldout.windows(stream, run.train_len, rows)
    if len(windows) < rows:
      raise EvalError(f"--nonuniformity_rows={rows} needs {rows * run.train_len + 1} "
                      f"held-out tokens; raise --eval_tokens or lower the rows")
    _, init = train_step.build(run.config, run.mesh,
                               optim.make_optimizer(run.config.train))
    theta = float(run.config.model.rope_theta)
    positionals = {kind: Positional(kind=kind, theta=theta) for kind in ("rope", "nope")}
    ctx.say(f"nonuniformity gradient at initialisation (seed {run.config.seed}): RoPE "
            f"and NoPE on {rows} windows of {run.train_len} tokens")
    measured = nonuniformity.measure(run.graphdef("xla"), init().params,
                                     [windows[:, :-1]], positionals=positionals,
                                     mesh=run.mesh)
    for kind, result in measured.items():
      ctx.say("  " + methods.KIND_NAMES[kind] + " grad norm per layer: " + "; ".join(
          f"{name} " + " ".join(f"{g:.3g}" for g in result[name]["grad_norm"])
          for name in nonuniformity.OBJECTIVES))
    path = results.write_record(run, self.name, dict(
        run=run.name, weights="init", seed=int(run.config.seed),
        train_len=run.train_len, rows=rows, tokens=rows * run.train_len,
        layers=run.model_config.n_layers, nonuniformity=measured))
    ctx.say(f"wrote {path}")
