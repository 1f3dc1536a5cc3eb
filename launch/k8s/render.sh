#!/usr/bin/env bash
# An lmjax job on Kubernetes: an Indexed Job of PROCESSES pods (one JAX process each) and a
# headless Service that gives pod 0 a stable name for the coordinator.
#
#   launch/k8s/render.sh [--dry-run] [--name NAME] [--processes N] [--gpus-per-process G]
#                        [--image IMAGE] [--pvc CLAIM] -- lmjax train --config ... --workdir /runs/x
#
# Prints the manifest (--dry-run) or applies it with kubectl. Each pod gets JAX_COORDINATOR_ADDRESS
# (pod 0 through the Service), JAX_NUM_PROCESSES and JAX_PROCESS_ID (its completion index), which
# `lmjax` reads to join the job by itself; no Kubernetes API access is needed, so no RBAC role.
# The workdir must be on the shared volume (--pvc, mounted at /runs; ReadWriteMany) or a gs://
# path. On preemption a pod fails and the Job restarts it (backoffLimit); the restarted pods run
# the same command, which resumes from the last checkpoint.
set -euo pipefail

name=lmjax processes=2 gpus=1 image=lmjax:cuda pvc=lmjax-runs port=12355 dry_run=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) dry_run=1 ;;
    --name) name=$2; shift ;;
    --processes) processes=$2; shift ;;
    --gpus-per-process) gpus=$2; shift ;;
    --image) image=$2; shift ;;
    --pvc) pvc=$2; shift ;;
    --) shift; break ;;
    *) echo "launch/k8s/render.sh: unknown option $1 (the command goes after --)" >&2; exit 2 ;;
  esac
  shift
done
[[ $# -gt 0 ]] || { echo "launch/k8s/render.sh: no command; e.g. -- lmjax train --workdir /runs/x" >&2; exit 2; }
[[ $processes =~ ^[1-9][0-9]*$ && $gpus =~ ^[0-9]+$ ]] || { echo "launch/k8s/render.sh: --processes takes a positive integer, --gpus-per-process a count" >&2; exit 2; }
[[ $name =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || { echo "launch/k8s/render.sh: --name must be a DNS label (lowercase letters, digits, '-')" >&2; exit 2; }

command_json=$(printf '%s\n' "$@" | sed 's/\\/\\\\/g; s/"/\\"/g; s/.*/"&"/' | paste -sd, -)
manifest=$(cat <<YAML
apiVersion: v1
kind: Service
metadata:
  name: $name
spec:
  clusterIP: None
  selector:
    job-name: $name
  ports:
    - name: coordinator
      port: $port
---
apiVersion: batch/v1
kind: Job
metadata:
  name: $name
spec:
  completionMode: Indexed
  completions: $processes
  parallelism: $processes
  backoffLimit: 10
  template:
    metadata:
      labels:
        job-name: $name
    spec:
      subdomain: $name
      restartPolicy: Never
      containers:
        - name: lmjax
          image: $image
          command: [$command_json]
          env:
            - name: JAX_COORDINATOR_ADDRESS
              value: "$name-0.$name:$port"
            - name: JAX_NUM_PROCESSES
              value: "$processes"
            - name: JAX_PROCESS_ID
              valueFrom:
                fieldRef:
                  fieldPath: "metadata.annotations['batch.kubernetes.io/job-completion-index']"
          ports:
            - containerPort: $port
          resources:
            limits:
              nvidia.com/gpu: $gpus
          volumeMounts:
            - name: runs
              mountPath: /runs
      volumes:
        - name: runs
          persistentVolumeClaim:
            claimName: $pvc
YAML
)
if ((dry_run)); then
  printf '%s\n' "$manifest"
else
  printf '%s\n' "$manifest" | kubectl apply -f -
fi
