#!/usr/bin/env bash
# One lmjax job on SLURM: one task per GPU across NODES nodes, started by srun; JAX reads the
# SLURM step's environment to join the tasks into one job (lmjax/process/distributed.py).
#
#   launch/slurm/submit.sh [--dry-run] [--nodes N] [--gpus-per-node G] [--time HH:MM:SS]
#                          [--partition P] [--name NAME] -- lmjax train --config ... --workdir /shared/runs/x
#
# --dry-run prints the batch script instead of submitting it. The workdir must be on storage
# every node sees. On preemption SLURM sends SIGTERM (lmjax saves a checkpoint and exits) and
# requeues the job (--requeue); the requeued job runs the same command, which resumes.
# For sweeps, `lmjax sweep --slurm` submits through submitit instead.
set -euo pipefail

nodes=1 gpus=8 time_limit=24:00:00 partition="" name=lmjax dry_run=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) dry_run=1 ;;
    --nodes) nodes=$2; shift ;;
    --gpus-per-node) gpus=$2; shift ;;
    --time) time_limit=$2; shift ;;
    --partition) partition=$2; shift ;;
    --name) name=$2; shift ;;
    --) shift; break ;;
    *) echo "launch/slurm/submit.sh: unknown option $1 (the command goes after --)" >&2; exit 2 ;;
  esac
  shift
done
[[ $# -gt 0 ]] || { echo "launch/slurm/submit.sh: no command; e.g. -- lmjax train --workdir /shared/runs/x" >&2; exit 2; }
[[ $nodes =~ ^[1-9][0-9]*$ && $gpus =~ ^[1-9][0-9]*$ ]] || { echo "launch/slurm/submit.sh: --nodes and --gpus-per-node take positive integers" >&2; exit 2; }

# shellcheck source=launch/lib.sh
source "$(dirname "$0")/../lib.sh"
logs=$(logs_of "$@")

script=$(cat <<SBATCH
#!/usr/bin/env bash
#SBATCH --job-name=$name
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=$gpus
#SBATCH --gpus-per-node=$gpus
#SBATCH --time=$time_limit
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.log
${partition:+#SBATCH --partition=$partition}
# One task per GPU; each task sees its own GPU and writes its stderr to $logs/process-<task>.log.
# --kill-on-bad-exit stops every task when one fails.
mkdir -p $(printf '%q' "$logs")
srun --kill-on-bad-exit=1 --gpus-per-task=1 --error=$(printf '%q' "$logs/process-%t.log") $(quoted "$@")
SBATCH
)
if ((dry_run)); then
  printf '%s\n' "$script"
else
  printf '%s\n' "$script" | sbatch
fi
