"""Bad Hugging Face input: one clear message, nothing written (exit code 2 from the CLI)."""

import json
import os
import subprocess
import sys

import pytest

from drope_jax.hf import convert
from tests import hf_models
from tests.test_hf_import import import_dir


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  directory = tmp_path_factory.mktemp("llama")
  hf_models.save("llama", str(directory))
  return directory


def _edit_config(directory, **changes):
  path = directory / "config.json"
  config = json.loads(path.read_text())
  config.update(changes)
  path.write_text(json.dumps(config))


def _copy(source, target):
  target.mkdir()
  for name in os.listdir(source):
    (target / name).write_bytes((source / name).read_bytes())
  return target


def _assert_refused(source, workdir, *fragments):
  with pytest.raises(convert.HFError) as error:
    import_dir(source, workdir)
  for fragment in fragments:
    assert fragment in str(error.value)
  assert not workdir.exists() or not any(
      p.name != "checkpoints" for p in workdir.iterdir())


def test_unsupported_architecture_lists_the_supported_ones(source, tmp_path):
  bad = _copy(source, tmp_path / "gpt2")
  _edit_config(bad, architectures=["GPT2LMHeadModel"])
  _assert_refused(bad, tmp_path / "run", "GPT2LMHeadModel", "LlamaForCausalLM",
                  "Qwen3ForCausalLM")


def test_active_sliding_window_is_refused(source, tmp_path):
  bad = _copy(source, tmp_path / "mistral")
  _edit_config(bad, architectures=["MistralForCausalLM"], model_type="mistral",
               sliding_window=8)
  _assert_refused(bad, tmp_path / "run", "sliding_window=8")


def test_missing_shard_is_named(source, tmp_path):
  bad = _copy(source, tmp_path / "sharded")
  os.rename(bad / "model.safetensors", bad / "model-00001-of-00002.safetensors")
  (bad / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
      "model.norm.weight": "model-00001-of-00002.safetensors",
      "lm_head.weight": "model-00002-of-00002.safetensors"}}))
  _assert_refused(bad, tmp_path / "run", "model-00002-of-00002.safetensors", "missing")


def test_tensor_shape_disagreeing_with_config_is_named(source, tmp_path):
  bad = _copy(source, tmp_path / "wide")
  _edit_config(bad, intermediate_size=64)
  _assert_refused(bad, tmp_path / "run", "mlp.gate_proj.weight", "(64, 32)", "(48, 32)")


def test_workdir_with_checkpoints_is_refused_untouched(source, tmp_path):
  workdir = tmp_path / "run"
  (workdir / "checkpoints" / "5").mkdir(parents=True)
  with pytest.raises(convert.HFError, match="already holds checkpoints"):
    import_dir(source, workdir)
  assert sorted(os.listdir(workdir)) == ["checkpoints"]


def test_cli_exits_2_with_the_message(source, tmp_path):
  bad = _copy(source, tmp_path / "gpt2")
  _edit_config(bad, architectures=["GPT2LMHeadModel"])
  result = subprocess.run(
      [sys.executable, "-m", "drope_jax.hf", "import", f"--hf={bad}",
       f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 2, result.stderr
  assert "GPT2LMHeadModel" in result.stderr and "Qwen2ForCausalLM" in result.stderr
  assert not (tmp_path / "run").exists()
