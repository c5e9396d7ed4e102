"""Imported Hugging Face models give transformers' logits and greedy generations."""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch

from drope_jax.eval import generate
from drope_jax.eval import loading
from drope_jax.hf import convert
from drope_jax.hf import importer
from tests import hf_models

# (architecture, lengths compared: the context, and 2x where RoPE is scaled).
CASES = [("llama", (hf_models.CONTEXT,)),
         ("qwen2", (hf_models.CONTEXT,)),
         ("qwen3", (hf_models.CONTEXT,)),
         ("mistral", (hf_models.CONTEXT,)),
         ("llama3", (hf_models.CONTEXT, 2 * hf_models.CONTEXT)),
         ("linear", (hf_models.CONTEXT, 2 * hf_models.CONTEXT))]


def import_dir(source, workdir, **kwargs):
  hf_config, tensors, files = importer.read_directory(source)
  return convert.import_model(hf_config, tensors, files, str(workdir), **kwargs)


def hf_logits(model, tokens_BS):
  with torch.no_grad():
    return model(torch.as_tensor(tokens_BS)).logits.numpy()


_IMPORTED = {}


def imported(name, tmp_path_factory):
  """(transformers model, our restored run, source directory) of architecture `name`,
  built once per test process (tests/test_hf_export.py exports these runs too)."""
  if name not in _IMPORTED:
    source = tmp_path_factory.mktemp(name)
    model = hf_models.save(name, str(source))
    workdir = tmp_path_factory.mktemp(name + "_run")
    import_dir(source, workdir)
    _IMPORTED[name] = model, loading.load_run(str(workdir)), source
  return _IMPORTED[name]


@pytest.mark.parametrize("name,lengths", CASES, ids=[c[0] for c in CASES])
def test_logits_equal_transformers(name, lengths, tmp_path_factory):
  hf_model, run, _ = imported(name, tmp_path_factory)
  ours = run.model()
  for length in lengths:
    tokens_BS = np.random.default_rng(length).integers(0, hf_models.VOCAB, (2, length))
    np.testing.assert_allclose(
        np.asarray(ours(tokens_BS, positional=run.positional())),
        hf_logits(hf_model, tokens_BS), atol=1e-5, rtol=0)


# Generation runs the KV-cache path, the same for every architecture: two suffice
# (per-head QK-norm; scaled RoPE with tied embeddings), to 38 tokens, past the context.
@pytest.mark.parametrize("name", ["qwen3", "llama3"])
def test_greedy_generation_equals_transformers(name, tmp_path_factory):
  hf_model, run, _ = imported(name, tmp_path_factory)
  prompt = np.random.default_rng(1).integers(3, hf_models.VOCAB, 6).astype(np.int32)
  with torch.no_grad():
    expected = hf_model.generate(
        torch.as_tensor(prompt[None]), max_new_tokens=32, min_new_tokens=32,
        do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(prompt):].numpy()
  (ours,) = generate.complete(
      run.graphdef(), run.params, [prompt], positional=run.positional(),
      sampling=generate.Sampling(max_new_tokens=32), eos_id=-1, pad_id=-2)
  np.testing.assert_array_equal(ours, expected)


def test_the_run_config_names_the_context_and_the_tokenizer(tmp_path_factory):
  _, run, _ = imported("llama3", tmp_path_factory)
  assert run.config.train.seq_len == hf_models.CONTEXT
  assert run.config.data.tokenizer.endswith("/hf/tokenizer.json")
  assert run.tokenizer().eos_id == 2 and run.phase == "pretrain"


def _train(config, workdir, **checkpoint_keys):
  from drope_jax import trainer  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  config.train.update(steps=2, warmup_steps=1, batch_size=8, log_every=1, eval_every=100)
  config.checkpoint.update(checkpoint_keys)
  trainer.Trainer(config, str(workdir)).run()
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(f"{workdir}/checkpoints/2/state")


def test_the_import_holds_no_optimizer_state_and_trains_as_a_branch_from_it(
    tmp_path_factory):
  """A fresh AdamW state is zeros: the import writes params only, and a run resuming
  the imported workdir makes the fresh state, as one branched from it does."""
  _, _, source = imported("qwen2", tmp_path_factory)
  workdir = tmp_path_factory.mktemp("trained_in_place")
  config = import_dir(source, workdir)
  with ocp.StandardCheckpointer() as checkpointer:
    saved = checkpointer.metadata(f"{workdir}/checkpoints/0/state").item_metadata.tree
  assert saved["opt_state"] is None and jax.tree.leaves(saved["params"])
  branched = _train(config, tmp_path_factory.mktemp("branch"), init_from=str(workdir))
  in_place = _train(config, workdir)
  assert int(in_place["opt_state"]["count"]) == 2
  jax.tree.map(np.testing.assert_array_equal, in_place, branched)


def test_taking_an_imports_optimizer_state_is_refused_before_compiling(tmp_path_factory):
  from drope_jax import errors  # pylint: disable=g-import-not-at-top
  from drope_jax import trainer  # pylint: disable=g-import-not-at-top
  _, run, _ = imported("qwen2", tmp_path_factory)
  config = run.config.copy_and_resolve_references()
  config.checkpoint.update(init_from=run.workdir, init_optimizer=True)
  workdir = tmp_path_factory.mktemp("refused") / "run"
  with pytest.raises(errors.BadInput, match="holds no optimizer state"):
    trainer.Trainer(config, str(workdir))
  assert not workdir.exists()
