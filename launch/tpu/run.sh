#!/usr/bin/env bash
# An lmjax job on a Cloud TPU VM slice: create it (or a queued resource), copy and install this
# checkout on every worker, run the same `lmjax train` on all of them (JAX detects the slice and
# joins the workers into one job), collect the logs (logs/NAME/), delete the slice. The workers
# get the checkout's committed HEAD (git archive): commit what the run needs first.
#
#   launch/tpu/run.sh [--dry-run] --name NAME --zone ZONE --type v5litepod-16 [--version V]
#                     [--queued] [--retries N] [--keep] -- lmjax train --config ... --workdir gs://bucket/runs/x
#
# --dry-run prints the gcloud commands and runs none. The workdir must be a gs:// path (or
# storage every worker mounts). When the slice is preempted (the run fails and the VM's state is
# PREEMPTED), it is deleted, created again and the same command runs again, which resumes from the
# last checkpoint: at most --retries times (default 3). --keep leaves the slice up at the end.
set -euo pipefail

name="" zone="" type="" version=tpu-ubuntu2204-base queued=0 retries=3 keep=0 dry_run=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) dry_run=1 ;;
    --name) name=$2; shift ;;
    --zone) zone=$2; shift ;;
    --type) type=$2; shift ;;
    --version) version=$2; shift ;;
    --queued) queued=1 ;;
    --retries) retries=$2; shift ;;
    --keep) keep=1 ;;
    --) shift; break ;;
    *) echo "launch/tpu/run.sh: unknown option $1 (the command goes after --)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n $name && -n $zone && -n $type ]] || { echo "launch/tpu/run.sh: --name, --zone and --type are required" >&2; exit 2; }
[[ $# -gt 0 ]] || { echo "launch/tpu/run.sh: no command; e.g. -- lmjax train --workdir gs://bucket/runs/x" >&2; exit 2; }
[[ $retries =~ ^[0-9]+$ ]] || { echo "launch/tpu/run.sh: --retries takes a count" >&2; exit 2; }

repo=$(cd "$(dirname "$0")/../.." && pwd)
tarball=${TMPDIR:-/tmp}/lmjax-$name.tgz  # the checkout's committed HEAD, as every worker gets it
remote_cmd="cd lmjax && $(printf '%q ' "$@" | sed 's/ $//') 2>&1 | tee -a \$HOME/lmjax-worker.log"
run() {  # print, and run unless --dry-run
  printf '%s\n' "$(printf '%q ' "$@" | sed 's/ $//')"
  ((dry_run)) || "$@"
}
tpu=(gcloud compute tpus tpu-vm)
create() {
  if ((queued)); then
    run gcloud compute tpus queued-resources create "$name" --node-id="$name" --zone="$zone" \
      --accelerator-type="$type" --runtime-version="$version"
  else
    run "${tpu[@]}" create "$name" --zone="$zone" --accelerator-type="$type" --version="$version"
  fi
}
delete() {
  if ((queued)); then
    run gcloud compute tpus queued-resources delete "$name" --zone="$zone" --force --quiet
  else
    run "${tpu[@]}" delete "$name" --zone="$zone" --quiet
  fi
}
state() { "${tpu[@]}" describe "$name" --zone="$zone" --format='value(state)' 2>/dev/null || echo GONE; }

status=1
for ((attempt = 0; attempt <= retries; attempt++)); do
  create
  run git -C "$repo" archive --format=tar.gz --prefix=lmjax/ -o "$tarball" HEAD
  run "${tpu[@]}" scp "$tarball" "$name:lmjax.tgz" --zone="$zone" --worker=all
  run "${tpu[@]}" ssh "$name" --zone="$zone" --worker=all \
    --command="rm -rf lmjax && tar xzf lmjax.tgz && cd lmjax && pip install -q -e . 'jax[tpu]'"
  if run "${tpu[@]}" ssh "$name" --zone="$zone" --worker=all --command="$remote_cmd"; then status=0; else status=$?; fi
  ((dry_run)) || mkdir -p "logs/$name"
  run "${tpu[@]}" scp "$name:lmjax-worker.log" "logs/$name/" --zone="$zone" --worker=all || true
  if ((dry_run)) || ((status == 0)) || [[ $(state) != PREEMPTED ]]; then break; fi
  echo "launch/tpu/run.sh: $name was preempted; recreating it ($((attempt + 1)) of $retries)" >&2
  delete
done
((keep)) || delete
exit "$status"
