"""Why NoPE trains slowly: the gradient towards non-uniform attention at initialisation.

The DroPE paper argues that at initialisation a NoPE model's attention is close to
uniform over the causal prefix and the gradient that would make it attend to specific
positions is small, whereas RoPE's rotations give that gradient from the start. This
module measures it on the same initial weights in both positional modes.

Definitions. For layer l, batch b, head h and query position i, let A[b,h,i,j] be the
causal attention probability of key j (softmax over j <= i, float32, as the model
computes it: attention_probe.query_attention). Two objectives per layer:

  diagonal      D_l = mean over (b, h, i)      of A[b, h, i, i]      (attend to itself)
  off_diagonal  O_l = mean over (b, h, i >= 1) of A[b, h, i, i - 1]  (attend to the
                                                                       previous token)

Reported per layer and objective: the value of the objective and the Frobenius norm of
its gradient with respect to that layer's query and key projections q_EHD and k_EKD
(one norm over both), the layer's input being what the model's earlier layers give it
in that positional mode. Uniform attention would give D_l = O_l = mean 1 / (i + 1).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from drope_jax import parallel
from drope_jax.eval import attention_probe
from drope_jax.model.positional import Positional

OBJECTIVES = ("diagonal", "off_diagonal")
_QK = ("q_EHD", "k_EKD")


def _objectives(probs_BHQT):
  diagonal = jnp.mean(jnp.diagonal(probs_BHQT, axis1=-2, axis2=-1))
  off_diagonal = jnp.mean(jnp.diagonal(probs_BHQT, offset=-1, axis1=-2, axis2=-1))
  return {"diagonal": diagonal, "off_diagonal": off_diagonal}


def layer_gradients(model, tokens_BS, positional: Positional) -> dict:
  """{objective: {"value": [L], "grad_norm": [L]}} as jax arrays (see the module doc)."""
  is_qk = lambda path, _: path[-1] in _QK
  queries_BQ = attention_probe.positions_of(tokens_BS)  # every query.
  out = {name: {"value": [], "grad_norm": []} for name in OBJECTIVES}
  for block, h_BSE, positions_BS in attention_probe.layer_inputs(
      model, tokens_BS, positional):
    graphdef, qk, rest = nnx.split(block.attn, is_qk, ...)

    def objective(qk, name):
      attn = nnx.merge(graphdef, qk, rest)
      probs = attention_probe.query_attention(attn, h_BSE, positions_BS, queries_BQ,
                                              positional)[0]
      return _objectives(probs)[name]

    for name in OBJECTIVES:
      value, grads = jax.value_and_grad(objective)(qk, name)
      out[name]["value"].append(value)
      out[name]["grad_norm"].append(jnp.sqrt(sum(
          jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads))))
  return {name: {k: jnp.stack(v) for k, v in d.items()} for name, d in out.items()}


def measure(graphdef, params, batches, *, positionals: dict[str, Positional],
            mesh) -> dict:
  """Means over `batches` (token arrays [B, S]) of layer_gradients, per positional mode:
  {mode: {objective: {"value": [L] floats, "grad_norm": [L] floats}}}."""
  results = {}
  with parallel.mesh_context(mesh):
    for mode, positional in positionals.items():
      fn = jax.jit(lambda params, tokens, p=positional: layer_gradients(
          nnx.merge(graphdef, params), tokens, p))
      per_batch = [jax.device_get(fn(params, tokens)) for tokens in batches]
      results[mode] = jax.tree.map(lambda *xs: [float(v) for v in sum(xs) / len(xs)],
                                   *per_batch)
  return results
