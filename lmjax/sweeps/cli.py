"""`lmjax sweep`: expand a sweep and run it here, list it, or submit it to SLURM.

    lmjax sweep --config experiments/NAME/config.py:ARG [--parallel N] [--threads_per_run T]
                [--dry-run [--mfu M]] [--status] [--only REGEX] [--noretry_failed] [--notable]
                [--slurm [--slurm_partition P] [--slurm_time 4:00:00] [--slurm_nodes N]
                         [--slurm_tasks_per_node T] [--slurm_gpus_per_run G]
                         [--slurm_cpus_per_run C] [--noslurm_array] [--slurm_parallelism K]
                         [--slurm_param KEY=VALUE] [--slurm_local] [--slurm_wait]
                         [--slurm_folder DIR]] [--verbose]

Exit status: 0 when every run is done (or for --dry-run / --status / a submission), 1 when some
run failed (recorded in its failed.json; the next sweep retries it), 130 when interrupted (the
running runs checkpointed: the same command finishes the rest), 2 for bad input (one `error:`
line).
"""

from __future__ import annotations

import re
import sys

from absl import flags

from lmjax.sweeps.spec import SweepError, expand, parse_config_arg

USAGE = "usage: lmjax sweep --config experiments/NAME/config.py:ARG [--parallel N] [--dry-run] [--slurm] (--help for flags)"


def _define(fv: flags.FlagValues) -> None:
    d = dict(flag_values=fv)
    flags.DEFINE_string("config", None, "Sweep config: a file with get_config(arg) and get_sweep(arg), "
                        "as path.py:ARG.", **d)
    flags.DEFINE_integer("parallel", 1, "Runs at once on this machine; each gets its own CPU cores "
                         "(and GPUs, when there are several).", lower_bound=1, **d)
    flags.DEFINE_integer("threads_per_run", 0, "CPU cores per run (0: the machine's cores / parallel).",
                         lower_bound=0, **d)
    flags.DEFINE_boolean("dry_run", False, "List the runs with parameters, FLOPs and estimated time; "
                         "run nothing.", **d)
    flags.DEFINE_boolean("status", False, "Show each run's status and progress; run nothing.", **d)
    flags.DEFINE_string("only", None, "Only the runs whose name matches this regular expression.", **d)
    flags.DEFINE_boolean("retry_failed", True, "Run failed runs again (--noretry_failed skips them).", **d)
    flags.DEFINE_boolean("table", True, "Live table on a terminal (elsewhere: one line per status change).", **d)
    flags.DEFINE_float("mfu", 0.0, "Dry run: assumed model FLOPs utilisation (0: 0.15 on CPU, 0.35 on "
                       "accelerators).", **d)
    flags.DEFINE_boolean("slurm", False, "Submit the runs to SLURM (submitit) instead of running them here.", **d)
    flags.DEFINE_string("slurm_partition", None, "SLURM partition.", **d)
    flags.DEFINE_string("slurm_time", "4:00:00", "Time limit per job (minutes, H:MM:SS or D-HH:MM:SS); "
                        "jobs checkpoint and requeue before it.", **d)
    flags.DEFINE_integer("slurm_gpus_per_run", 0, "GPUs per node of each job (with --slurm_nodes > 1, "
                         "per node).", **d)
    flags.DEFINE_integer("slurm_nodes", 1, "Nodes per run: a run spans them as one JAX job.", **d)
    flags.DEFINE_integer("slurm_tasks_per_node", 0, "JAX processes per node (0: one per GPU with "
                         "--slurm_nodes > 1, else 1).", **d)
    flags.DEFINE_integer("slurm_cpus_per_run", 0, "CPUs per job (0: the cluster's default).", **d)
    flags.DEFINE_boolean("slurm_array", True, "One job array for the sweep (--noslurm_array: one job per run).", **d)
    flags.DEFINE_integer("slurm_parallelism", 0, "At most this many array tasks at once (0: no limit).", **d)
    flags.DEFINE_multi_string("slurm_param", [], "Extra submitit parameter KEY=VALUE (e.g. "
                              "slurm_account=abc, mem_gb=32, slurm_qos=high); repeatable.", **d)
    flags.DEFINE_boolean("slurm_local", False, "Use submitit's local executor (jobs on this machine; "
                         "for testing the submission path).", **d)
    flags.DEFINE_boolean("slurm_wait", False, "Wait for the submitted jobs and report their status "
                         "(always with --slurm_local).", **d)
    flags.DEFINE_string("slurm_folder", None, "submitit's folder (default <experiment>/runs/<ARG>/_submitit).", **d)
    flags.DEFINE_boolean("verbose", False, "Show tracebacks for errors.", **d)


def _normalise(argv: list[str]) -> list[str]:
    """`--dry-run` -> `--dry_run`: hyphens in flag names are accepted as underscores."""
    out = []
    for a in argv:
        if a.startswith("--") and len(a) > 2:
            name, eq, value = a[2:].partition("=")
            a = "--" + name.replace("-", "_") + eq + value
        out.append(a)
    return out


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse(argv: list[str]) -> flags.FlagValues:
    fv = flags.FlagValues()
    _define(fv)
    try:
        rest = fv(["lmjax sweep"] + _normalise(argv))
    except flags.Error as e:
        raise SweepError(str(e).splitlines()[0]) from e
    if len(rest) > 1:
        raise SweepError(f"unexpected argument {rest[1]!r}; {USAGE}")
    if not fv.config:
        raise SweepError("--config is required: lmjax sweep --config experiments/NAME/config.py:ARG")
    return fv


def run(fv: flags.FlagValues) -> int:
    from lmjax.sweeps import runner

    config_path, arg = parse_config_arg(fv.config)
    runs = expand(config_path, arg)
    if fv.only:
        try:
            pattern = re.compile(fv.only)
        except re.error as e:
            raise SweepError(f"--only={fv.only!r} is not a regular expression ({e})") from e
        runs = [r for r in runs if pattern.search(r.name)]
        if not runs:
            raise SweepError(f"--only={fv.only!r} matches none of the sweep's runs")
    if fv.dry_run:
        from lmjax.sweeps.dry_run import dry_run_report

        print(dry_run_report(runs, parallel=fv.parallel, mfu=fv.mfu or None))
        return 0
    if fv.status:
        print(runner.status_report(runs))
        return 0
    if fv.slurm:
        return _submit(fv, runs, config_path, arg)
    result = runner.run_sweep(runs, config_path=config_path, arg=arg, parallel=fv.parallel,
                              threads_per_run=fv.threads_per_run or None, table=fv.table,
                              retry_failed=fv.retry_failed)
    if result.interrupted:
        return 130
    return 1 if any(st == "failed" for st in result.values()) else 0


def _submit(fv, runs, config_path, arg) -> int:
    from lmjax.sweeps import slurm

    extra = {}
    for item in fv.slurm_param:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SweepError(f"--slurm_param={item!r}: use KEY=VALUE, e.g. slurm_account=abc")
        extra[key] = _value(value)
    executor = "local" if fv.slurm_local else "slurm"
    jobs, todo = slurm.submit(
        runs, config_path=config_path, arg=arg, executor=executor, array=fv.slurm_array,
        folder=fv.slurm_folder, timeout_min=slurm.parse_time(fv.slurm_time),
        gpus_per_run=fv.slurm_gpus_per_run, cpus_per_run=fv.slurm_cpus_per_run or None,
        nodes=fv.slurm_nodes, tasks_per_node=fv.slurm_tasks_per_node or None,
        partition=fv.slurm_partition, array_parallelism=fv.slurm_parallelism or None,
        slurm_kwargs=extra, retry_failed=fv.retry_failed,
    )
    skipped = len(runs) - len(todo)
    if not jobs:
        print(f"nothing to submit: {skipped} of {len(runs)} runs are done or running elsewhere")
        return 0
    ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
    print(f"submitted {len(jobs)} run(s) to {executor} "
          f"({'job array' if fv.slurm_array else 'one job per run'}: {', '.join(ids)}); "
          f"{skipped} skipped (done or running)")
    for job, r in zip(jobs, todo):
        print(f"  {r.name}: job {job.job_id}")
    if not (fv.slurm_wait or fv.slurm_local):
        print(f"progress: lmjax sweep --config {fv.config} --status")
        return 0
    statuses = slurm.wait(jobs, todo)
    from lmjax.sweeps.runner import status_report

    print(status_report(runs))
    return 1 if any(st == "failed" for st in statuses.values()) else 0


def main(argv: list[str] | None = None) -> int:
    from lmjax.cli.main import delegated_main

    return delegated_main(argv, define=_define, doc=__doc__, run=lambda a: run(parse(a)))


if __name__ == "__main__":
    sys.exit(main())
