"""Bad Hugging Face input: one clear message, nothing written (exit code 2 from the CLI)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from drope_jax.hf import convert
from drope_jax.hf import safetensors_io
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


def _import_cli(hf, workdir):
  result = subprocess.run(
      [sys.executable, "-m", "drope_jax.hf", "import", f"--hf={hf}", f"--workdir={workdir}"],
      capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert len(errors) == 1, result.stderr[-3000:]
  assert not workdir.exists()
  return errors[0]


@pytest.mark.parametrize("poison", [np.nan, np.inf])
def test_a_non_finite_tensor_is_named_and_nothing_written(source, tmp_path, poison):
  bad = _copy(source, tmp_path / "damaged")
  tensors = {name: t.load().copy()
             for name, t in safetensors_io.open_checkpoint(bad).items()}
  tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = poison
  safetensors_io._write_file(bad / "model.safetensors", tensors)  # pylint: disable=protected-access
  error = _import_cli(bad, tmp_path / "run")
  assert "tensor model.layers.1.mlp.up_proj.weight holds 1 non-finite" in error


@pytest.mark.parametrize("changes, problems", [
    ({"num_hidden_layers": "two"}, ['"num_hidden_layers": "two" is not an integer']),
    ({"intermediate_size": None}, ['"intermediate_size" is missing']),
    ({"hidden_size": 32.5, "rms_norm_eps": "small", "tie_word_embeddings": 1},
     ['"hidden_size": 32.5 is not an integer', '"rms_norm_eps": "small" is not a number',
      '"tie_word_embeddings": 1 is not true or false']),
])
def test_config_fields_of_the_wrong_type_or_missing_are_each_named(
    source, tmp_path, changes, problems):
  bad = _copy(source, tmp_path / "config")
  config = json.loads((bad / "config.json").read_text())
  config.update(changes)
  config = {k: v for k, v in config.items() if v is not None}
  (bad / "config.json").write_text(json.dumps(config))
  error = _import_cli(bad, tmp_path / "run")
  for problem in problems:
    assert problem in error


@pytest.mark.parametrize("out", ["a_file", "a_file/model"])
def test_export_to_a_file_is_one_error_line(source, tmp_path, out):
  workdir = tmp_path / "run"
  import_dir(source, workdir)
  (tmp_path / "a_file").write_text("kept")
  result = subprocess.run(
      [sys.executable, "-m", "drope_jax.hf", "export", f"--workdir={workdir}",
       f"--out={tmp_path / out}"], capture_output=True, text=True,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert len(errors) == 1 and "a_file is a file, not a directory" in errors[0], errors
  assert (tmp_path / "a_file").read_text() == "kept"
