"""Perplexity vs length: kernels agree, windows and buckets are what they claim."""

import dataclasses
import functools

import jax
import numpy as np
import pytest
from flax import nnx

from drope_jax import train_step
from drope_jax.eval import heldout
from drope_jax.eval import perplexity
from drope_jax.eval import temperature
from drope_jax.model.positional import Positional
from tests import helpers

ROPE = Positional("rope", theta=10_000.0)


def test_chunked_long_evaluation_equals_the_xla_full_pass():
  config = helpers.tiny_config("rope", attention_chunk=16).model
  mesh = helpers.mesh()
  model = helpers.build_model(config, on_mesh=mesh)
  graphdef_xla, params = nnx.split(model, nnx.Param)
  graphdef_chunked = nnx.graphdef(helpers.build_model(
      helpers.tiny_config("rope", attention_chunk=16, attention="chunked").model,
      on_mesh=mesh))
  stream = np.random.default_rng(0).integers(0, 64, 5 * 48 + 1).astype(np.int32)
  windows = heldout.windows(stream, 48, 5)
  positional = dataclasses.replace(ROPE, scaling="yarn", factor=3.0, original_max_len=16)
  run = lambda g: perplexity.evaluate(g, params, windows, positional=positional,
                                      mesh=mesh, batch_size=2)
  xla, chunked = run(graphdef_xla), run(graphdef_chunked)
  assert xla.tokens == chunked.tokens == 5 * 48
  np.testing.assert_allclose(chunked.loss_by_position, xla.loss_by_position, rtol=1e-5)
  np.testing.assert_allclose(chunked.perplexity, xla.perplexity, rtol=1e-6)
  # The per-position loss is the plain cross-entropy of a full forward pass.
  logits = model(windows[:, :-1], positional=positional)
  log_probs = jax.nn.log_softmax(logits)
  expected = -np.take_along_axis(np.asarray(log_probs), windows[:, 1:, None], -1)[..., 0]
  np.testing.assert_allclose(xla.loss_by_position, expected.mean(0), rtol=1e-5)


def test_losses_computed_a_chunk_of_positions_at_a_time_equal_the_whole_window():
  model = helpers.build_model(helpers.tiny_config("rope").model)
  tokens_BS = np.random.default_rng(1).integers(0, 64, (2, 49)).astype(np.int32)
  x_BSE = model.hidden(tokens_BS[:, :-1], positional=ROPE)
  whole = train_step.position_losses(model.logits, x_BSE, tokens_BS[:, 1:], 0)
  chunked = train_step.position_losses(model.logits, x_BSE, tokens_BS[:, 1:], 16)
  assert chunked.shape == (2, 48)
  np.testing.assert_allclose(chunked, whole, rtol=1e-6)


@pytest.mark.parametrize("attention", ["xla", "chunked"])
def test_a_temperature_passed_as_an_argument_equals_a_static_one_in_one_program(
    attention):
  config = helpers.tiny_config("nope", attention=attention, attention_chunk=16).model
  mesh = helpers.mesh()
  graphdef, params = nnx.split(helpers.build_model(config, on_mesh=mesh), nnx.Param)
  stream = np.random.default_rng(2).integers(0, 64, 3 * 48 + 1).astype(np.int32)
  windows = heldout.windows(stream, 48, 3)
  nope = Positional("nope")
  loss_fn = perplexity.make_loss_fn(graphdef, nope)
  for beta in (0.7, 1.0, 1.6):
    static = perplexity.evaluate(graphdef, params, windows, mesh=mesh, batch_size=2,
                                 positional=nope.with_temperature(beta))
    traced = perplexity.evaluate(
        graphdef, params, windows, mesh=mesh, batch_size=2, positional=nope,
        loss_fn=functools.partial(loss_fn, temperature=np.float32(beta)))
    np.testing.assert_allclose(traced.loss_by_position, static.loss_by_position,
                               rtol=1e-5)
  assert loss_fn._cache_size() == 1  # pylint: disable=protected-access


def test_windows_cover_the_same_text_at_every_length_and_predict_each_token_once():
  stream = np.arange(1000, dtype=np.int32)
  short, long = heldout.windows(stream, 100, 99), heldout.windows(stream, 400, 99)
  assert short.shape == (9, 101) and long.shape == (2, 401)
  np.testing.assert_array_equal(short[:, 1:].ravel(), np.arange(1, 901))
  np.testing.assert_array_equal(long[:, 1:].ravel(), np.arange(1, 801))


def test_buckets_end_at_the_longest_length_and_are_empty_past_each_length():
  edges = perplexity.bucket_edges(train_len=64, max_len=256)
  assert edges == list(range(0, 257, 16))
  result = perplexity.Result(length=128, tokens=128, loss=1.0,
                             loss_by_position=np.arange(128, dtype=float))
  buckets = result.bucket_losses(edges)
  assert buckets[0] == np.mean(np.arange(16)) and buckets[7] == np.mean(np.arange(112, 128))
  assert buckets[8:] == [None] * 8


def test_temperature_fit_finds_the_minimum_on_a_coarse_then_fine_grid():
  calls = []
  def loss_at(c):
    calls.append(c)
    return (c - 0.43) ** 2
  c, grid = temperature.fit(loss_at)
  assert abs(c - 0.43) <= 0.011
  assert len(calls) == len(set(calls)) == len(grid) < 25
  assert [x for x, _ in grid] == sorted(x for x, _ in grid)
