"""The attention analyses: the probe sees what the model computes; the metrics and the
non-uniformity gradient measure what they say."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from drope_jax import parallel
from drope_jax.data import needles
from drope_jax.data import tokenizers
from drope_jax.eval import attention_probe
from drope_jax.eval import needle_attention
from drope_jax.eval import nonuniformity
from drope_jax.eval import report
from drope_jax.model.positional import Positional
from tests import helpers

POSITIONALS = {
    "rope": Positional("rope"),
    "nope": Positional("nope"),
    "yarn_temperature": Positional("rope", scaling="yarn", factor=2.0, original_max_len=8,
                                   temperature=1.3),
}
HAYSTACK = " ".join(
    f"The {a} {n} walked to the {m} and sat there quietly." for a, n, m in zip(
        needles.ADJECTIVES * 3, needles.NOUNS * 3, needles.NOUNS[::-1] * 3))


def _tokens(batch, length, vocab, seed=0):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, vocab)


def _compiled(model, fn):
  """fn(model, *args), jitted: eager dispatch of many small ops is slow on a busy CPU."""
  graphdef, params = nnx.split(model)
  compiled = jax.jit(lambda params, *args: fn(nnx.merge(graphdef, params), *args))
  return lambda *args: compiled(params, *args)


@pytest.mark.parametrize("name", list(POSITIONALS))
def test_probe_attention_equals_the_models_and_is_a_causal_distribution(name):
  positional = POSITIONALS[name]

  def probe_and_model(model, tokens_BS):
    probes, expected = [], []
    for block, h_BSE, positions_BS in attention_probe.layer_inputs(
        model, tokens_BS, positional):
      probes.append(attention_probe.query_attention(
          block.attn, h_BSE, positions_BS, attention_probe.positions_of(tokens_BS),
          positional))
      expected.append(block.attn(h_BSE, positions_BS=positions_BS, segment_ids_BS=None,
                                 positional=positional))
    # The stream the probe walks (embed, blocks) is the model's whole forward.
    x_BSE = model.embed(tokens_BS)
    for block, _, positions_BS in attention_probe.layer_inputs(model, tokens_BS, positional):
      x_BSE = block(x_BSE, positions_BS, None, positional)
    return probes, expected, model.logits(x_BSE), model(tokens_BS, positional=positional)

  model = helpers.build_model(helpers.tiny_config().model, seed=1)
  with parallel.mesh_context(helpers.mesh()):
    probes, expected, logits, model_logits = _compiled(model, probe_and_model)(
        _tokens(2, 12, 64))
  future = np.triu(np.ones((12, 12), bool), k=1)
  for (probs_BHQT, out_BQE), expected_BSE in zip(probes, expected, strict=True):
    np.testing.assert_allclose(out_BQE, expected_BSE, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(probs_BHQT.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.asarray(probs_BHQT)[..., future] == 0)
  np.testing.assert_allclose(logits, model_logits, atol=1e-5)


def test_last_query_probs_are_the_rows_of_each_prompts_last_position():
  positional = POSITIONALS["rope"]

  def last_and_all(model, tokens_BS, last_B):
    # Right padding past the query changes nothing: pad row 1 past its query.
    padded_BS = tokens_BS.at[1, 5:].set(0)
    return (attention_probe.last_query_probs(model, tokens_BS, last_B, positional),
            attention_probe.last_query_probs(model, padded_BS, last_B, positional),
            [attention_probe.query_attention(
                block.attn, h, p, attention_probe.positions_of(tokens_BS), positional)[0]
             for block, h, p in attention_probe.layer_inputs(model, tokens_BS, positional)])

  model = helpers.build_model(helpers.tiny_config().model, seed=2)
  with parallel.mesh_context(helpers.mesh()):
    probs_LBHS, padded_LBHS, full = _compiled(model, last_and_all)(
        _tokens(2, 10, 64, seed=3), jnp.array([9, 4]))
  assert probs_LBHS.shape == (2, 2, 4, 10)
  for layer, probs_BHQT in enumerate(full):
    np.testing.assert_allclose(probs_LBHS[layer, 0], probs_BHQT[0, :, 9], atol=1e-6)
    np.testing.assert_allclose(probs_LBHS[layer, 1], probs_BHQT[1, :, 4], atol=1e-6)
  np.testing.assert_allclose(padded_LBHS[:, 1], probs_LBHS[:, 1], atol=1e-6)


def test_needle_spans_locate_the_value_and_sentence_tokens():
  tokenizer = tokenizers.get_tokenizer("byte")
  example = needles.make_example(
      needles.Haystack(HAYSTACK), variant="multikey", target_tokens=900, depth=0.4,
      rng=np.random.default_rng(0), count_tokens=lambda t: len(tokenizer.encode(t)))
  (a, b), (s, e) = needle_attention.needle_spans(tokenizer, example)
  ids = [tokenizer.eos_id] + tokenizer.encode(example.prompt)
  assert tokenizer.decode(ids[a:b]) == example.answers[0]
  assert tokenizer.decode(ids[s:e]).startswith("One of the special magic numbers for ")
  assert tokenizer.decode(ids[s:e]).endswith(f" is: {example.answers[0]}. ")


def test_head_metrics_on_a_known_distribution():
  probs_LHT = np.zeros((1, 2, 40))
  probs_LHT[0, 0, [20, 21, 22]] = [0.25, 0.25, 0.5]   # on the value (20, 23)
  probs_LHT[0, 1, [0, 17, 30]] = [0.5, 0.25, 0.25]    # far, near, far past the sentence
  m = needle_attention.head_metrics(probs_LHT, 39, (20, 23), (10, 25), window=4)
  np.testing.assert_allclose(m["centre"][0], [1.0, 0.0])
  np.testing.assert_allclose(m["window"][0], [1.0, 0.25])
  np.testing.assert_allclose(m["peak"][0], [0.5, 0.25])
  np.testing.assert_allclose(m["sentence"][0], [1.0, 0.25])
  np.testing.assert_allclose(m["tail"][0], [0.0, 0.75])  # keys < 6 or >= 29.


def _needle_seeking_model():
  """One layer, NoPE; head 0 attends to digit tokens only, head 1 uniformly."""
  tokenizer = tokenizers.get_tokenizer("byte")
  model = helpers.build_model(helpers.tiny_config("nope", vocab_size=264, n_layers=1).model)
  digits = tokenizer.encode("0123456789")
  table_VE = np.zeros((264, 32), np.float32)
  table_VE[:, 1] = 1.0
  table_VE[digits, 0], table_VE[digits, 1] = 1.0, 0.0
  q_EHD = np.zeros((32, 4, 8), np.float32)
  q_EHD[:2, 0, 0] = 3.0   # whatever the token, head 0's query points along d0...
  k_EKD = np.zeros((32, 2, 8), np.float32)
  k_EKD[0, 0, 0] = 3.0    # ...which only digits' keys (kv head 0) share.
  model.embed.table_VE[...] = table_VE
  model.blocks.attn.q_EHD[...] = q_EHD[None]  # the model's one layer.
  model.blocks.attn.k_EKD[...] = k_EKD[None]
  return tokenizer, model


def test_a_head_built_to_find_the_needle_reports_centre_mass_one():
  tokenizer, model = _needle_seeking_model()
  graphdef, params = nnx.split(model)
  out = needle_attention.run(
      lambda length: graphdef, params, tokenizer=tokenizer, haystack=HAYSTACK,
      lengths=[400], variants=["single"], depths=[0.2, 0.8], trials=2,
      positional_for=lambda length: Positional("nope"), rows_for=lambda length: 2,
      mesh=helpers.mesh(), progress=lambda _: None)
  assert out["lengths"] == [400] and out["prompts"] == [4]
  (centre_LH,) = out["metrics"]["centre"]
  assert centre_LH[0][0] > 0.999
  assert out["metrics"]["peak"][0][0][0] == pytest.approx(1 / 7, abs=1e-3)
  # Head 1 is uniform: its mass on the needle is the chance level.
  assert centre_LH[0][1] == pytest.approx(out["chance"]["centre"][0], rel=1e-4)
  assert out["metrics"]["tail"][0][0][0] < 1e-3


def test_nonuniformity_gradient_is_zero_where_attention_cannot_move():
  model = helpers.build_model(helpers.tiny_config().model, seed=0)
  attn = model.blocks.attn  # every layer: q = k = 0, uniform attention, no gradient.
  attn.q_EHD[...] = jnp.zeros_like(attn.q_EHD[...])
  attn.k_EKD[...] = jnp.zeros_like(attn.k_EKD[...])
  graphdef, params = nnx.split(model)
  tokens = np.asarray(_tokens(2, 16, 64))
  results = nonuniformity.measure(graphdef, params, [tokens],
                                  positionals={"rope": POSITIONALS["rope"]},
                                  mesh=helpers.mesh())
  uniform = np.mean(1 / np.arange(1, 17))
  uniform_off = np.mean(1 / np.arange(2, 17))
  for layer in range(2):
    assert results["rope"]["diagonal"]["grad_norm"][layer] == 0
    assert results["rope"]["off_diagonal"]["grad_norm"][layer] == 0
    assert results["rope"]["diagonal"]["value"][layer] == pytest.approx(uniform, rel=1e-5)
    assert results["rope"]["off_diagonal"]["value"][layer] == pytest.approx(uniform_off, rel=1e-5)


def test_nonuniformity_gradient_of_the_first_layer_matches_a_plain_reference():
  model = helpers.build_model(helpers.tiny_config().model, seed=4)
  tokens_BS = _tokens(2, 8, 64, seed=5)
  graphdef, params = nnx.split(model)
  result = nonuniformity.measure(graphdef, params, [tokens_BS], mesh=helpers.mesh(),
                                 positionals={"nope": POSITIONALS["nope"]})["nope"]
  first = model.layer(0)
  h_BSE = first.attn_norm(model.embed(tokens_BS))
  attn = first.attn

  @functools.partial(jax.jit, static_argnums=2)
  def reference(q_EHD, k_EKD, offset):
    q = jnp.einsum("bse,ehd->bhsd", h_BSE, q_EHD)
    k = jnp.repeat(jnp.einsum("bse,ekd->bksd", h_BSE, k_EKD), 2, axis=1)
    logits = jnp.einsum("bhsd,bhtd->bhst", q, k) / jnp.sqrt(8.0)
    logits = jnp.where(jnp.tril(jnp.ones((8, 8), bool)), logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.mean(jnp.diagonal(probs, offset=offset, axis1=-2, axis2=-1))

  for name, offset in (("diagonal", 0), ("off_diagonal", -1)):
    value, (g_q, g_k) = jax.value_and_grad(reference, argnums=(0, 1))(
        attn.q_EHD[...], attn.k_EKD[...], offset)
    norm = jnp.sqrt(jnp.sum(g_q ** 2) + jnp.sum(g_k ** 2))
    assert result[name]["value"][0] == pytest.approx(float(value), rel=1e-5)
    assert result[name]["grad_norm"][0] == pytest.approx(float(norm), rel=1e-4)
    assert norm > 0


def test_report_has_a_section_and_plots_per_analysis(tmp_path):
  needle = dict(run="r", method="yarn", train_len=64, lengths=[128, 256], prompts=[3, 3],
                layers=2, heads=2, window=4,
                metrics={m: [[[0.1, 0.7], [0.2, 0.3]], [[0.1, 0.2], [0.4, 0.3]]]
                         for m in needle_attention.METRICS},
                chance={"centre": [0.05, 0.02], "sentence": [0.2, 0.1]})
  grads = lambda scale: {name: {"value": [0.1, 0.1], "grad_norm": [scale, scale / 2]}
                         for name in nonuniformity.OBJECTIVES}
  nonuni = dict(run="r", weights="init", train_len=64, layers=2,
                nonuniformity={"rope": grads(2.0), "nope": grads(0.5)})
  for name, data in (("needle_attention_yarn", needle), ("nonuniformity_grad", nonuni)):
    (tmp_path / f"{name}.json").write_text(json.dumps(data))
  text = open(report.write_report([str(tmp_path)], str(tmp_path / "out"))).read()
  assert "| r | yarn | 128 (2x) | 3 | 0.3250 | 0.1 | 0.7000 | 0.0500 |" in text
  assert "| r | 1 | 1 | 0.25 | 4.00 | 1 | 0.25 | 4.00 |" in text
  for png in ("needle_attention_r_yarn.png", "nonuniformity_grad.png"):
    assert f"({png})" in text and (tmp_path / "out" / png).exists()
