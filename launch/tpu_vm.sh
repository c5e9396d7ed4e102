#!/usr/bin/env bash
# Runs drope_jax on Cloud TPU VMs: create the slice(s), install this checkout on every
# worker, start the same training command on every worker, delete. See launch/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh COMMAND --name=NAME --zone=ZONE [options] [-- TRAIN_FLAGS...]

Commands:
  create   create the TPU VM, or a queued resource with --queued / --slices > 1
  setup    copy this checkout to every worker and install requirements.txt + jax[tpu]
  train    run `python -m drope_jax.train` on every worker (same command everywhere)
  up       create, wait until ready, setup, train
  delete   delete the TPU VM (or the queued resource and its slices)

Options:
  --name=NAME              TPU VM / queued resource name (slices are NAME-0, NAME-1, ...)
  --zone=ZONE              e.g. us-east5-a (default: $ZONE)
  --project=PROJECT        default: gcloud's configured project
  --accelerator=TYPE       e.g. v5p-128, v5litepod-256 (or v5e-256), v6e-64, v4-32
  --runtime-version=V      default: picked from the accelerator generation
  --spot                   Spot capacity
  --queued                 use a queued resource (implied by --slices > 1)
  --slices=N               multislice: N slices of --accelerator (default 1)
  --config=PATH[:VARIANT]  e.g. configs/ablation_500m.py:drope
  --workdir=gs://BUCKET/DIR  shared by all workers; re-running resumes from it
  --python=VERSION         Python for the workers' venv (default 3.11)
  --dry-run                print the commands instead of running them
Anything after `--` is passed to the trainer, e.g. -- --config.train.steps=100
Local logs go to $DROPE_LOG_DIR (default ~/drope_logs); each worker logs to
~/drope_logs/train.log.
EOF
}

die() {
  echo "tpu_vm.sh: $*" >&2
  exit 2
}

# Prints words as a shell command line that reads back as the same words.
show() {
  local word out=()
  for word in "$@"; do
    if [[ "${word}" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+=("${word}")
    else
      out+=("${word@Q}")
    fi
  done
  echo "${out[*]}"
}

run() {
  if ((dry_run)); then
    show "$@"
  else
    "$@"
  fi
}

default_runtime() {
  case "$1" in
    v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) die "no default runtime for --accelerator=$1: pass --runtime-version" ;;
  esac
}

# Runs REMOTE on every worker of every slice at once; output to stdout and LOG.
on_every_worker() {
  local remote="$1" log="$2" node pid status=0 pids=()
  for node in "${nodes[@]}"; do
    local ssh=(gcloud compute tpus tpu-vm ssh "${node}" --worker=all "${gcloud_flags[@]}"
      --command="${remote}")
    if ((dry_run)); then
      echo "$(show "${ssh[@]}") 2>&1 | tee -a $(show "${log}")"
    else
      "${ssh[@]}" 2>&1 | tee -a "${log}" &
      pids+=("$!")
    fi
  done
  for pid in "${pids[@]}"; do
    wait "${pid}" || status=1
  done
  return "${status}"
}

create() {
  [[ -n "${accelerator}" ]] || die "create needs --accelerator"
  local spot_flag=()
  ((spot)) && spot_flag=(--spot)
  if ((queued)); then
    local nodes_flag=(--node-id="${name}")
    ((slices > 1)) && nodes_flag=(--node-count="${slices}" --node-prefix="${name}")
    run gcloud compute tpus queued-resources create "${name}" \
      --accelerator-type="${accelerator}" --runtime-version="${runtime}" \
      "${nodes_flag[@]}" "${spot_flag[@]}" "${gcloud_flags[@]}"
  else
    run gcloud compute tpus tpu-vm create "${name}" \
      --accelerator-type="${accelerator}" --version="${runtime}" \
      "${spot_flag[@]}" "${gcloud_flags[@]}"
  fi
}

# A queued resource is granted later: wait until its slices exist.
wait_until_active() {
  local describe=(gcloud compute tpus queued-resources describe "${name}"
    --format='value(state.state)' "${gcloud_flags[@]}")
  if ((dry_run)); then
    echo "# until ACTIVE, every 60 s: $(show "${describe[@]}")"
    return
  fi
  local state
  until state="$("${describe[@]}")" && [[ "${state}" == "ACTIVE" ]]; do
    echo "queued resource ${name}: ${state:-unknown}; waiting" >&2
    case "${state}" in FAILED | SUSPENDED) die "queued resource ${name} is ${state}" ;; esac
    sleep 60
  done
}

setup() {
  local archive
  archive="$(mktemp -u -t drope_jax.XXXXXX).tar.gz"
  # The working tree as it is (tracked and untracked files, minus .gitignore'd ones).
  local pack
  pack="git -C $(show "${repo_root}") ls-files -z --cached --others --exclude-standard"
  pack+=" | tar -C $(show "${repo_root}") -czf $(show "${archive}") --null"
  pack+=" --ignore-failed-read -T -"
  if ((dry_run)); then
    echo "${pack}"
  else
    bash -o pipefail -c "${pack}"
  fi
  local jax_version
  jax_version="$(sed -n 's/^jax==//p' "${repo_root}/requirements.txt")"
  local node
  for node in "${nodes[@]}"; do
    run gcloud compute tpus tpu-vm scp "${archive}" "${node}:drope_jax.tar.gz" \
      --worker=all "${gcloud_flags[@]}"
  done
  ((dry_run)) || rm -f "${archive}"
  # uv brings the Python the pins need, whatever the TPU image ships.
  local install="set -euo pipefail; rm -rf ~/drope_jax && mkdir -p ~/drope_jax"
  install+=" && tar -xzf ~/drope_jax.tar.gz -C ~/drope_jax"
  install+=" && python3 -m pip install --user --quiet uv"
  install+=" && { [[ -x ~/drope_venv/bin/python ]] ||"
  install+=" ~/.local/bin/uv venv --python $(show "${python}") ~/drope_venv; }"
  install+=" && cd ~/drope_jax && ~/.local/bin/uv pip install --python ~/drope_venv/bin/python"
  install+=" -r requirements.txt $(show "jax[tpu]==${jax_version}")"
  on_every_worker "${install}" "${log}"
}

train() {
  [[ -n "${config}" ]] || die "train needs --config=configs/FILE.py[:VARIANT]"
  [[ "${workdir}" == gs://* ]] ||
    die "--workdir must be gs://BUCKET/DIR: every worker writes to the same workdir"
  # Slices are data parallel over DCN unless the caller says otherwise.
  if ((slices > 1)) && [[ " ${train_args[*]} " != *" --config.mesh.dcn_shape="* ]]; then
    train_args+=("--config.mesh.dcn_shape=(${slices},1,1)")
  fi
  local remote="set -o pipefail; mkdir -p ~/drope_logs && cd ~/drope_jax"
  # DROPE_DISTRIBUTED=auto: JAX finds the other workers from the TPU metadata.
  remote+=" && DROPE_DISTRIBUTED=auto ~/drope_venv/bin/python"
  remote+=" $(show -m drope_jax.train --config="${config}" --workdir="${workdir}" \
    "${train_args[@]}") 2>&1 | tee -a ~/drope_logs/train.log"
  on_every_worker "${remote}" "${log}"
}

delete() {
  if ((queued)); then
    run gcloud compute tpus queued-resources delete "${name}" --force --quiet "${gcloud_flags[@]}"
  else
    run gcloud compute tpus tpu-vm delete "${name}" --quiet "${gcloud_flags[@]}"
  fi
}

main() {
  [[ $# -gt 0 ]] || {
    usage
    exit 2
  }
  local subcommand="$1"
  shift
  name="" zone="${ZONE:-}" project="" accelerator="" runtime="" config="" workdir=""
  python="3.11" spot=0 queued=0 slices=1 dry_run=0 train_args=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --name=*) name="${1#*=}" ;;
      --zone=*) zone="${1#*=}" ;;
      --project=*) project="${1#*=}" ;;
      --accelerator=*) accelerator="${1#*=}" ;;
      --runtime-version=*) runtime="${1#*=}" ;;
      --spot) spot=1 ;;
      --queued) queued=1 ;;
      --slices=*) slices="${1#*=}" ;;
      --config=*) config="${1#*=}" ;;
      --workdir=*) workdir="${1#*=}" ;;
      --python=*) python="${1#*=}" ;;
      --dry-run) dry_run=1 ;;
      -h | --help)
        usage
        exit 0
        ;;
      --)
        shift
        train_args=("$@")
        break
        ;;
      *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
  done
  [[ -n "${name}" ]] || die "--name is required"
  [[ -n "${zone}" ]] || die "--zone is required (or set \$ZONE)"
  [[ "${slices}" =~ ^[1-9][0-9]*$ ]] || die "--slices must be a positive integer"
  ((slices > 1)) && queued=1
  accelerator="${accelerator/#v5e-/v5litepod-}"
  if [[ -z "${runtime}" && -n "${accelerator}" ]]; then
    runtime="$(default_runtime "${accelerator}")"
  fi
  gcloud_flags=(--zone="${zone}")
  [[ -n "${project}" ]] && gcloud_flags+=(--project="${project}")
  nodes=("${name}")
  if ((slices > 1)); then
    nodes=()
    local i
    for ((i = 0; i < slices; i++)); do nodes+=("${name}-${i}"); done
  fi
  repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  local log_dir="${DROPE_LOG_DIR:-${HOME}/drope_logs}"
  log="${log_dir}/${name}-$(date +%Y%m%d-%H%M%S).log"
  ((dry_run)) || mkdir -p "${log_dir}"

  case "${subcommand}" in
    create) create ;;
    setup) setup ;;
    train) train ;;
    up)
      create
      ((queued)) && wait_until_active
      setup
      train
      ;;
    delete) delete ;;
    -h | --help) usage ;;
    *) die "unknown command ${subcommand} (see --help)" ;;
  esac
}

main "$@"
