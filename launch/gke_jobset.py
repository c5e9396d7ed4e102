"""Writes (and optionally submits) a JobSet that runs drope_jax on GKE TPU slices.

  python launch/gke_jobset.py --name=drope-7b --accelerator=v5p-128 --image=IMAGE \
      --config=configs/llama_7b.py:drope --workdir=gs://BUCKET/DIR > jobset.yaml
  kubectl apply -f jobset.yaml      # or add --submit (with --dry-run: print, don't run)

One Job per slice (JobSet replicas), one pod per TPU host (completions = parallelism =
hosts per slice), every pod running the same train command. JAX finds its peers from
the variables GKE puts into TPU pods (DROPE_DISTRIBUTED=auto); with several slices the
pods also get the MEGASCALE variables that join the slices over DCN, and the trainer gets
--config.mesh.dcn_shape=(slices,1,1) unless the extra flags already set it.
Anything after `--` is passed to the trainer.
"""

import argparse
import dataclasses
import json
import subprocess
import sys

# Slice topologies by chip count: 3D tori (v4, v5p) and 2D (v5e, v6e).
_TOPOLOGY_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4",
                128: "4x4x8", 256: "4x8x8", 512: "8x8x8", 1024: "8x8x16",
                2048: "8x16x16", 4096: "16x16x16"}
_TOPOLOGY_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8",
                128: "8x16", 256: "16x16"}

# Accelerator type prefix -> (GKE node label, cores per chip in the type's count, topologies).
# v4 and v5p types count TensorCores (two per chip); v5e and v6e count chips.
_GENERATIONS = {
    "v4": ("tpu-v4-podslice", 2, _TOPOLOGY_3D),
    "v5p": ("tpu-v5p-slice", 2, _TOPOLOGY_3D),
    "v5litepod": ("tpu-v5-lite-podslice", 1, _TOPOLOGY_2D),
    "v6e": ("tpu-v6e-slice", 1, _TOPOLOGY_2D),
}
_MEGASCALE_PORT = 8080


@dataclasses.dataclass(frozen=True)
class Slice:
  gke_accelerator: str
  topology: str
  chips: int
  hosts: int

  @property
  def chips_per_host(self) -> int:
    return self.chips // self.hosts


def slice_shape(accelerator: str) -> Slice:
  """The GKE shape of a TPU type such as v5p-128, v5litepod-256 (or v5e-256), v6e-64."""
  generation, _, count = accelerator.replace("v5e-", "v5litepod-").partition("-")
  if generation not in _GENERATIONS or not count.isdigit():
    raise ValueError(f"unknown accelerator {accelerator!r}: use e.g. v5p-128, v5e-256, v6e-64")
  label, cores_per_chip, topologies = _GENERATIONS[generation]
  chips = int(count) // cores_per_chip
  if chips not in topologies:
    raise ValueError(f"{accelerator}: no GKE slice of {chips} chips; "
                     f"chip counts: {sorted(topologies)}")
  # 3D slices have 4 chips per host; 2D slices up to 8 chips are one host, else 4 per host.
  chips_per_host = 4 if topologies is _TOPOLOGY_3D or chips > 8 else chips
  return Slice(label, topologies[chips], chips, max(1, chips // chips_per_host))


def train_command(config: str, workdir: str, slices: int, extra: list[str]) -> list[str]:
  if not workdir.startswith("gs://"):
    raise ValueError(f"--workdir={workdir}: use gs://BUCKET/DIR, which every pod can reach")
  flags = [f"--config={config}", f"--workdir={workdir}", *extra]
  if slices > 1 and not any(f.startswith("--config.mesh.dcn_shape=") for f in extra):
    flags.append(f"--config.mesh.dcn_shape=({slices},1,1)")
  return ["python", "-m", "drope_jax.train", *flags]


def jobset(*, name: str, accelerator: str, slices: int, image: str, command: list[str],
           max_restarts: int = 3, queue: str | None = None,
           service_account: str | None = None) -> dict:
  """The JobSet manifest as a dict."""
  shape = slice_shape(accelerator)
  container = {
      "name": "train",
      "image": image,
      "command": command,
      # The trainer calls jax.distributed.initialize(), which reads GKE's TPU variables.
      "env": [{"name": "DROPE_DISTRIBUTED", "value": "auto"}],
      "ports": [{"containerPort": 8471}, {"containerPort": _MEGASCALE_PORT}],
      "resources": {"limits": {"google.com/tpu": shape.chips_per_host}},
  }
  if slices > 1:
    container["env"] += [
        {"name": "MEGASCALE_COORDINATOR_ADDRESS", "value": f"{name}-slice-0-0.{name}"},
        {"name": "MEGASCALE_PORT", "value": str(_MEGASCALE_PORT)},
        {"name": "MEGASCALE_NUM_SLICES", "value": str(slices)},
        {"name": "MEGASCALE_SLICE_ID", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['jobset.sigs.k8s.io/job-index']"}}},
    ]
  pod_spec = {
      "restartPolicy": "Never",
      "hostNetwork": True,
      "dnsPolicy": "ClusterFirstWithHostNet",
      "nodeSelector": {
          "cloud.google.com/gke-tpu-accelerator": shape.gke_accelerator,
          "cloud.google.com/gke-tpu-topology": shape.topology,
      },
      "containers": [container],
  }
  if service_account:  # Workload Identity: how the pods reach gs://.
    pod_spec["serviceAccountName"] = service_account
  metadata = {
      "name": name,
      # One slice per node pool.
      "annotations": {"alpha.jobset.sigs.k8s.io/exclusive-topology":
                      "cloud.google.com/gke-nodepool"},
  }
  if queue:
    metadata["labels"] = {"kueue.x-k8s.io/queue-name": queue}
  return {
      "apiVersion": "jobset.x-k8s.io/v1alpha2",
      "kind": "JobSet",
      "metadata": metadata,
      "spec": {
          # Restarting is cheap: the trainer resumes from the workdir.
          "failurePolicy": {"maxRestarts": max_restarts},
          "replicatedJobs": [{
              "name": "slice",
              "replicas": slices,
              "template": {"spec": {
                  "parallelism": shape.hosts,
                  "completions": shape.hosts,
                  "backoffLimit": 0,  # one lost host fails the slice; JobSet restarts all.
                  "template": {"spec": pod_spec},
              }},
          }],
      },
  }


def to_yaml(manifest: dict) -> str:
  try:
    import yaml  # pylint: disable=g-import-not-at-top
  except ImportError:  # JSON is YAML too, and kubectl reads it.
    return json.dumps(manifest, indent=2) + "\n"
  return yaml.safe_dump(manifest, sort_keys=False)


def main(argv: list[str]) -> int:
  extra = []
  if "--" in argv:
    argv, extra = argv[:argv.index("--")], argv[argv.index("--") + 1:]
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--name", required=True, help="JobSet name (DNS label)")
  parser.add_argument("--accelerator", required=True, help="e.g. v5p-128, v5e-256, v6e-64")
  parser.add_argument("--slices", type=int, default=1)
  parser.add_argument("--image", required=True,
                      help="image with this checkout and its requirements (launch/Dockerfile)")
  parser.add_argument("--config", required=True, help="configs/FILE.py[:VARIANT]")
  parser.add_argument("--workdir", required=True, help="gs://BUCKET/DIR")
  parser.add_argument("--max-restarts", type=int, default=3)
  parser.add_argument("--queue", help="Kueue LocalQueue name")
  parser.add_argument("--service-account", help="Kubernetes service account for gs://")
  parser.add_argument("--submit", action="store_true", help="kubectl apply the manifest")
  parser.add_argument("--dry-run", action="store_true",
                      help="with --submit: print the kubectl command instead of running it")
  args = parser.parse_args(argv)
  try:
    command = train_command(args.config, args.workdir, args.slices, extra)
    manifest = to_yaml(jobset(
        name=args.name, accelerator=args.accelerator, slices=args.slices, image=args.image,
        command=command, max_restarts=args.max_restarts, queue=args.queue,
        service_account=args.service_account))
  except ValueError as e:
    parser.error(str(e))
  if not args.submit:
    sys.stdout.write(manifest)
  elif args.dry_run:
    sys.stdout.write(f"kubectl apply -f - <<'EOF'\n{manifest}EOF\n")
  else:
    return subprocess.run(["kubectl", "apply", "-f", "-"], input=manifest, text=True,
                          check=False).returncode
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
