#!/usr/bin/env bash
# N lmjax processes on this machine, joined into one JAX job through a localhost coordinator,
# each with M CPU devices: how the tests run multi-process code, and how to try it on a laptop.
#
#   launch/local.sh [--dry-run] [-n PROCESSES] [-d DEVICES] [-p PORT] [-l LOGDIR] -- lmjax train ARGS...
#
# Each process gets JAX_COORDINATOR_ADDRESS=localhost:PORT, JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=K
# (which `lmjax` reads to join the job by itself) and M fake CPU devices, and writes its stderr to
# LOGDIR/process-K.log (default: <the command's --workdir>/logs). The script waits for all of them
# and exits with the first non-zero status; when one process fails, the others are given
# GRACE_S seconds to notice (lmjax's heartbeat) and are then stopped. --dry-run prints the
# commands and starts nothing. On preemption: run the same command again; lmjax resumes from
# the workdir's last checkpoint. Needs bash >= 5.1 (wait -n -p).
set -euo pipefail

n=2 devices=4 port=12355 logdir="" dry_run=0
GRACE_S=${GRACE_S:-60}
usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) dry_run=1 ;;
    -n) n=$2; shift ;;
    -d) devices=$2; shift ;;
    -p) port=$2; shift ;;
    -l) logdir=$2; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "launch/local.sh: unknown option $1 (the command goes after --)" >&2; usage ;;
  esac
  shift
done
[[ $# -gt 0 ]] || { echo "launch/local.sh: no command; e.g. -- lmjax train --workdir runs/x" >&2; exit 2; }
[[ $n =~ ^[1-9][0-9]*$ && $devices =~ ^[1-9][0-9]*$ ]] || { echo "launch/local.sh: -n and -d take positive integers" >&2; exit 2; }
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"
[[ -n $logdir ]] || logdir=$(logs_of "$@")

xla_flags="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices"
env_of() { printf 'JAX_COORDINATOR_ADDRESS=localhost:%s JAX_NUM_PROCESSES=%s JAX_PROCESS_ID=%s XLA_FLAGS=%q' \
  "$port" "$n" "$1" "${xla_flags# }"; }
if ((dry_run)); then
  for ((k = 0; k < n; k++)); do
    printf '%s %s 2> %q\n' "$(env_of "$k")" "$(quoted "$@")" "$logdir/process-$k.log"
  done
  exit 0
fi

mkdir -p "$logdir"
pids=()
for ((k = 0; k < n; k++)); do
  JAX_COORDINATOR_ADDRESS=localhost:$port JAX_NUM_PROCESSES=$n JAX_PROCESS_ID=$k XLA_FLAGS="${xla_flags# }" \
    "$@" 2>"$logdir/process-$k.log" &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
any_alive() { local p; for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
status=0 running=("${pids[@]}")
while ((${#running[@]})); do
  code=0
  wait -n -p done_pid "${running[@]}" || code=$?
  left=()
  for p in "${running[@]}"; do [[ $p == "$done_pid" ]] || left+=("$p"); done
  running=("${left[@]}")
  ((code == 0)) && continue
  status=$code
  for k in "${!pids[@]}"; do [[ ${pids[k]} == "$done_pid" ]] && lost=$k; done
  echo "launch/local.sh: process ${lost:-?} (pid $done_pid) exited with status $code, see $logdir/process-${lost:-?}.log; the others get ${GRACE_S} s" >&2
  deadline=$((SECONDS + GRACE_S))
  while ((SECONDS < deadline)) && any_alive "${running[@]}"; do sleep 1; done
  any_alive "${running[@]}" && kill "${running[@]}" 2>/dev/null
  break
done
wait 2>/dev/null || true
exit "$status"
