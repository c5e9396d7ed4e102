"""KV-cache generation: the cached logits are the full forward pass's, token by token."""

import jax
import numpy as np
import pytest
from flax import nnx

from drope_jax.eval import generate
from drope_jax.model.positional import Positional
from tests import helpers

ROPE = Positional("rope", theta=10_000.0)
NOPE = Positional("nope")
EOS, PAD = 62, 63
MAX_NEW = 6


def _model(**overrides):
  model = helpers.build_model(helpers.tiny_config(**overrides).model, seed=3)
  return nnx.split(model, nnx.Param)


def _prompts():
  rng = np.random.default_rng(0)
  # Different lengths in one batch, and longer than one prefill chunk.
  return [rng.integers(0, 60, n).astype(np.int32) for n in (21, 9, 30)]


@pytest.mark.parametrize("positional,kv_heads", [
    (ROPE, 2), (NOPE, 2), (Positional("nope", temperature=1.3), 1)],
    ids=["rope-gqa", "nope-gqa", "nope-temperature-mqa"])
def test_cached_decoding_matches_the_full_forward_pass(positional, kv_heads):
  graphdef, params = _model(n_kv_heads=kv_heads)
  sampling = generate.Sampling(max_new_tokens=MAX_NEW)
  fn = generate.make_generate_fn(graphdef, positional, sampling, eos_id=EOS, pad_id=PAD,
                                 vocab_limit=EOS, prefill_chunk=16, return_logits=True)
  prompts = _prompts()
  tokens_BP, lengths_B = generate.pad_prompts(prompts, 3, PAD, prefill_chunk=16)
  new_BN, logits_BNV = jax.device_get(fn(params, tokens_BP, lengths_B, jax.random.key(0)))
  assert tokens_BP.shape[1] == 32  # two prefill chunks.
  model = nnx.merge(graphdef, params)
  for row, prompt in enumerate(prompts):
    assert np.all(new_BN[row] < EOS)  # greedy, within the vocabulary limit.
    sequence = np.concatenate([prompt, new_BN[row]])[None]
    full_SV = np.asarray(model(sequence, positional=positional))[0]
    expected = full_SV[len(prompt) - 1:len(prompt) - 1 + MAX_NEW]
    np.testing.assert_allclose(logits_BNV[row], expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(new_BN[row], expected[:, :EOS].argmax(-1))


def test_generation_stops_at_eos_and_sampling_is_seeded():
  graphdef, params = _model()
  prompts = _prompts()
  run = lambda eos, sampling, seed=0: generate.complete(
      graphdef, params, prompts, positional=ROPE, sampling=sampling, eos_id=eos,
      pad_id=PAD, batch_size=2, prefill_chunk=16, seed=seed)
  greedy = run(EOS, generate.Sampling(MAX_NEW))
  assert [len(c) for c in greedy] == [MAX_NEW] * 3
  # Declaring row 0's last token the EOS ends that row where it first appears.
  eos = int(greedy[0][-1])
  stopped = run(eos, generate.Sampling(MAX_NEW))
  np.testing.assert_array_equal(stopped[0], greedy[0][:list(greedy[0]).index(eos)])
  sampled = lambda seed: run(EOS, generate.Sampling(MAX_NEW, temperature=1.0, top_k=5),
                             seed)
  first, again, other = sampled(0), sampled(0), sampled(1)
  assert all(np.array_equal(a, b) for a, b in zip(first, again))
  assert not all(np.array_equal(a, b) for a, b in zip(first, other))
