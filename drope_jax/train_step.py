"""The train state and the pure, jitted step functions built for one training phase.

    built, init = build(config, mesh, tx, phase.model)    # structure, shardings
    state = init()                                        # sharded by the logical rules
    train_step = make_train_step(config, built, lr_fn, phase.positional)
    state, metrics = train_step(state, batch)

A `Positional` is baked into each step function: the DroPE switch builds new ones, and
`carry_over` moves the state onto the next phase's structure (new QK-norm gains).
"""

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from drope_jax import parallel
from drope_jax.model import transformer
from drope_jax.model.positional import Positional


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any       # nnx.State of the model's Params.
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class Built:
  """What every step function needs besides the state: static structure and shardings."""
  graphdef: Any
  tx: optax.GradientTransformation
  state_shardings: Any
  abstract_state: Any  # ShapeDtypeStructs with shardings: the restore target.
  mesh: jax.sharding.Mesh
  init: Callable[[], TrainState]  # the initial state, unsharded and unjitted.


def build(config, mesh, tx, model_config=None) -> tuple[Built, Callable[[], TrainState]]:
  """Returns the static parts and an init function producing a sharded TrainState.

  The model is `model_config` (default `config.model`): a phase may add QK-norm gains.
  """
  model_cfg = transformer.ModelConfig.from_config(model_config or config.model)

  def init() -> TrainState:
    model = transformer.Transformer(model_cfg, rngs=nnx.Rngs(config.seed))
    _, params = nnx.split(model, nnx.Param)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params))

  with parallel.mesh_context(mesh):
    graphdef = nnx.graphdef(nnx.eval_shape(
        lambda: transformer.Transformer(model_cfg, rngs=nnx.Rngs(0))))
    abstract = jax.eval_shape(init)
    # Mesh axes that do not divide a parameter's dimension replicate it (parallel.py).
    shardings = parallel.fit_shardings(abstract, nnx.get_named_sharding(abstract, mesh))
  abstract = jax.tree.map(
      lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
      abstract, shardings)
  built = Built(graphdef=graphdef, tx=tx, state_shardings=shardings,
                abstract_state=abstract, mesh=mesh, init=init)

  def init_sharded() -> TrainState:
    with parallel.mesh_context(mesh):
      return jax.jit(init, out_shardings=shardings)()

  return built, init_sharded


def _loss_sums(graphdef, params, batch, positional, chunk: int):
  """Summed token cross-entropy and the summed weights of one (micro)batch."""
  model = nnx.merge(graphdef, params)
  x_BSE = model.hidden(batch["inputs"], positional=positional,
                       positions_BS=batch["positions"],
                       segment_ids_BS=batch["segment_ids"])
  weights_BS = batch["weights"]
  return (cross_entropy_sum(model.logits, x_BSE, batch["targets"], weights_BS, chunk),
          jnp.sum(weights_BS))


def cross_entropy_sum(logits_fn, x_BSE, targets_BS, weights_BS, chunk: int):
  """sum(weights * cross-entropy of logits_fn(x)), `chunk` positions at a time.

  The [B, S, V] float32 logits (and their gradient) are the largest arrays of a step
  with a big vocabulary; chunked, only [B, chunk, V] exist at once and the backward
  recomputes each chunk's. A chunk that does not divide S, or 0, means one chunk.
  """
  def chunk_sum(x_BCE, targets_BC, weights_BC):
    losses_BC = optax.softmax_cross_entropy_with_integer_labels(logits_fn(x_BCE), targets_BC)
    return jnp.sum(losses_BC * weights_BC)

  if not _chunks_divide(x_BSE.shape[1], chunk):
    return chunk_sum(x_BSE, targets_BS, weights_BS)

  def add_chunk(total, chunk_inputs):
    return total + jax.checkpoint(chunk_sum)(*chunk_inputs), None

  total, _ = jax.lax.scan(
      add_chunk, jnp.zeros((), jnp.float32),
      tuple(_to_chunks(a, chunk) for a in (x_BSE, targets_BS, weights_BS)))
  return total


def position_losses(logits_fn, x_BSE, targets_BS, chunk: int) -> jax.Array:
  """Cross-entropy of logits_fn(x) at every position [B, S], `chunk` positions' logits
  at a time (evaluation: no gradient, so nothing is recomputed)."""
  def losses(x_BCE, targets_BC):
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(x_BCE), targets_BC)

  B, S = targets_BS.shape
  if not _chunks_divide(S, chunk):
    return losses(x_BSE, targets_BS)
  losses_NBC = jax.lax.map(lambda args: losses(*args),
                           (_to_chunks(x_BSE, chunk), _to_chunks(targets_BS, chunk)))
  return jnp.swapaxes(losses_NBC, 0, 1).reshape(B, S)


def _chunks_divide(S: int, chunk: int) -> bool:
  """Whether `chunk` splits a sequence of S into several chunks (else: one, all of S)."""
  return 0 < chunk < S and S % chunk == 0


def _to_chunks(a_BS, chunk: int):
  """[B, S, ...] -> [S / chunk, B, chunk, ...]."""
  B, S = a_BS.shape[:2]
  return jnp.swapaxes(a_BS.reshape(B, S // chunk, chunk, *a_BS.shape[2:]), 0, 1)


def _grads(graphdef, params, batch, positional, grad_accum: int, chunk: int):
  """Mean loss and its gradient over the batch, in `grad_accum` sequential micro-batches."""
  def sums_and_grads(micro):
    (loss_sum, weight_sum), grads = jax.value_and_grad(
        lambda p: _loss_sums(graphdef, p, micro, positional, chunk), has_aux=True)(params)
    return loss_sum, weight_sum, grads

  if grad_accum == 1:
    loss_sum, weight_sum, grads = sums_and_grads(batch)
  else:
    micro_batches = jax.tree.map(
        lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:]), batch)

    def accumulate(carry, micro):
      loss_sum, weight_sum, grads = sums_and_grads(micro)
      acc = (carry[0] + loss_sum, carry[1] + weight_sum,
             jax.tree.map(jnp.add, carry[2], grads))
      return acc, None

    zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
    (loss_sum, weight_sum, grads), _ = jax.lax.scan(accumulate, zeros, micro_batches)
  denom = jnp.maximum(weight_sum, 1.0)
  return loss_sum / denom, jax.tree.map(lambda g: g / denom, grads)


def make_train_step(config, built: Built, lr_fn, positional: Positional):
  """A jitted (state, batch) -> (state, metrics) for one positional mode.

  A non-finite loss or gradient leaves the state unchanged (the step is skipped) and is
  reported in `metrics['nonfinite']`; the trainer decides whether to stop.
  """
  grad_accum = config.train.grad_accum
  parallel.check_batch(config.train.batch_size, grad_accum, built.mesh)

  def step_fn(state: TrainState, batch) -> tuple[TrainState, dict]:
    loss, grads = _grads(built.graphdef, state.params, batch, positional, grad_accum,
                         config.train.loss_chunk)
    grad_norm = optax.global_norm(grads)
    lr = lr_fn(state.step)
    opt_state = state.opt_state
    opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
    updates, new_opt_state = built.tx.update(grads, opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = TrainState(step=state.step + 1,
                           params=keep(new_params, state.params),
                           opt_state=keep(new_opt_state, state.opt_state))
    metrics = dict(loss=loss, grad_norm=grad_norm, lr=lr, nonfinite=~finite)
    return new_state, metrics

  batch_sharding = parallel.batch_sharding(built.mesh)
  jitted = jax.jit(step_fn, in_shardings=(built.state_shardings, batch_sharding),
                   out_shardings=(built.state_shardings, None), donate_argnums=(0,))

  def run(state, batch):
    with parallel.mesh_context(built.mesh):
      return jitted(state, batch)

  run.lower = lambda state, batch: _lower(jitted, built.mesh, state, batch)
  return run


def _lower(jitted, mesh, state, batch):
  with parallel.mesh_context(mesh):
    return jitted.lower(state, batch)


def make_eval_step(built: Built, positional: Positional, loss_chunk: int = 0):
  """A jitted (params, batch) -> (summed loss, summed weights)."""
  batch_sharding = parallel.batch_sharding(built.mesh)
  jitted = jax.jit(
      lambda params, batch: _loss_sums(built.graphdef, params, batch, positional,
                                       loss_chunk),
      in_shardings=(built.state_shardings.params, batch_sharding))

  def run(params, batch):
    with parallel.mesh_context(built.mesh):
      return jitted(params, batch)

  return run


def carry_over(built: Built, state: TrainState, *, reset_optimizer: bool) -> TrainState:
  """`state` moved onto `built`'s structure (the next phase's), kept sharded.

  Step and parameters are kept, and the optimizer state unless `reset_optimizer`.
  What is new here starts as `build`'s init makes it: QK-norm gains at 1 and zero
  moments (all moments, and the count, when reset).
  """
  if not reset_optimizer and (jax.tree.structure(state)
                              == jax.tree.structure(built.abstract_state)):
    return state
  kept = ("step", "params") if reset_optimizer else ("step", "params", "opt_state")

  def carry(state):
    old = {jax.tree_util.keystr(p): x
           for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}

    def take(path, fresh):
      part = path[0].name  # step | params | opt_state
      return old.get(jax.tree_util.keystr(path), fresh) if part in kept else fresh

    # XLA computes only the init values that are used: those of the new arrays.
    return jax.tree_util.tree_map_with_path(take, built.init())

  with parallel.mesh_context(built.mesh):
    return jax.jit(carry, out_shardings=built.state_shardings, donate_argnums=0)(state)
