"""The evaluations `--evals` chooses from, in the order evaluate runs them.

A new evaluation is a module of drope_jax/eval/evaluations/ with an api.Evaluation,
and one line here.
"""

from drope_jax.data import tasks
from drope_jax.eval import api
from drope_jax.eval.evaluations import needle_attention
from drope_jax.eval.evaluations import niah
from drope_jax.eval.evaluations import nonuniformity_grad
from drope_jax.eval.evaluations import perplexity
from drope_jax.eval.evaluations import task_accuracy

EVALUATIONS: dict[str, api.Evaluation] = {e.name: e for e in (
    perplexity.Perplexity(),
    niah.Niah(),
    needle_attention.NeedleAttention(),
    nonuniformity_grad.NonuniformityGrad(),
    *(task_accuracy.TaskAccuracy(name) for name in tasks.TASKS),
)}
