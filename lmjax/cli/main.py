"""The `lmjax` command: train, prepare, eval, sample, sweep, report.

    lmjax train [--config configs/NAME.py[:ARG]] [--config.model.num_layers=4 ...] [--workdir runs/x]
    lmjax prepare [--config configs/NAME.py[:ARG]] [--config.data.corpus=... ...] [--workers N] [--ray ADDRESS] [--rebuild]
    lmjax eval --workdir runs/x [--batches N] [--val_part all|tune|test]
    lmjax sample --workdir runs/x --prompt "def " [--prompt "..."] [--temperature 0.8 ...]
    lmjax finetune --init runs/x --task stdlib-modules --workdir runs/x-cls [--config.finetune.steps=300 ...]
    lmjax export --workdir runs/x --out hf/x [--step N] [--dtype bfloat16] [--max_shard_size 5GB]
    lmjax import --from hf/gpt2 --workdir runs/gpt2 [--config.data.corpus=... --config.train.steps=...]
    lmjax sweep --config experiments/NAME/config.py:ARG [--parallel N] [--dry-run]
    lmjax report experiments/NAME

Configs are parsed by ml_collections' config_flags (files with get_config(arg), key-by-key
overrides). Every user error ends in one `error: ...` line and exit status 2.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from lmjax import config as config_lib
from lmjax.errors import ConfigError, LmjaxError

COMMANDS = ("train", "prepare", "eval", "sample", "finetune", "export", "import", "sweep", "report", "fit")
HELP = ("-h", "--help", "-help", "--helpfull")  # any of them, anywhere after the command
# Commands with their own parsers, in their own folders.
DELEGATED = {"sweep": "lmjax.sweeps.cli", "report": "lmjax.analysis.cli", "fit": "lmjax.analysis.chinchilla"}
USAGE = f"usage: lmjax {{{','.join(COMMANDS)}}} [flags]   (lmjax COMMAND --help for flags)"


def default_config_path() -> str:
    path = Path(__file__).resolve().parents[2] / "configs" / "default.py"
    return str(path) if path.exists() else ""


def _define_flags(command: str, fv: flags.FlagValues, argv: list[str]) -> None:
    """`argv`: the command line config_flags takes --config.KEY overrides from."""
    flags.DEFINE_boolean("verbose", False, "Show tracebacks for errors.", flag_values=fv)
    if command in ("train", "prepare"):
        config_flags.DEFINE_config_file(
            "config", default_config_path() or None, "Config file (configs/NAME.py[:ARG]).",
            flag_values=fv, lock_config=False, sys_argv=argv,
        )
        flags.DEFINE_boolean("distributed", False, "Call jax.distributed.initialize() even where the "
                             "environment names no job lmjax recognises (a SLURM step of several "
                             "tasks, a multi-host TPU slice and JAX_COORDINATOR_ADDRESS / "
                             "JAX_NUM_PROCESSES / JAX_PROCESS_ID join by themselves).", flag_values=fv)
    if command == "prepare":
        flags.DEFINE_integer("workers", 0, "Tokenizing processes (0: this machine's cores; in a job of "
                             "several processes, per process).", flag_values=fv)
        flags.DEFINE_string("ray", "", "Run the per-shard work as Ray tasks on the cluster at this "
                            "address (host:port of `ray start --head`; needs lmjax[ray]).", flag_values=fv)
        flags.DEFINE_boolean("rebuild", False, "Set the existing tokenizer and token store aside "
                             "(renamed, not deleted) and build them again.", flag_values=fv)
        flags.DEFINE_boolean("progress", True, "Report the pieces built as they finish.", flag_values=fv)
        return
    if command == "train":
        flags.DEFINE_string("workdir", "", "Run folder (default runs/<config name>).", flag_values=fv)
        flags.DEFINE_boolean("force", False, "Start over in a workdir that holds another config's run "
                             "(its checkpoints are renamed, not deleted).", flag_values=fv)
        flags.DEFINE_boolean("progress", True, "Show a progress bar.", flag_values=fv)
        return
    if command == "finetune":
        config_flags.DEFINE_config_dict("config", config_lib.finetune_base_config(),
                                        "config.finetune keys, e.g. --config.finetune.steps=300.",
                                        flag_values=fv, lock_config=False, sys_argv=argv)
        flags.DEFINE_string("init", None, "The pretrained run's workdir (config.finetune.init).",
                            flag_values=fv)
        flags.DEFINE_string("task", None, f"'{config_lib.STDLIB_TASK}' or a .jsonl/.tsv file of labelled "
                            "texts (config.finetune.task).", flag_values=fv)
        flags.DEFINE_string("workdir", None, "Folder for the fine-tuned run.", flag_values=fv)
        flags.DEFINE_boolean("force", False, "Start over in a workdir that holds a run (its checkpoints "
                             "are renamed, not deleted).", flag_values=fv)
        return
    if command == "import":
        config_flags.DEFINE_config_dict("config", config_lib.base_config(), "Keys to set in the imported "
                                        "run's config, e.g. --config.data.corpus=tinyshakespeare; the "
                                        "model keys come from the directory's config.json.",
                                        flag_values=fv, lock_config=False, sys_argv=argv)
        flags.DEFINE_string("from", None, "A Hugging Face GPT-2 or LLaMA directory (config.json, "
                            "model.safetensors, tokenizer.json).", flag_values=fv)
        flags.DEFINE_string("workdir", None, "New folder for the imported run.", flag_values=fv)
        return
    flags.DEFINE_string("workdir", None, "Run folder written by `lmjax train`.", flag_values=fv)
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", flag_values=fv)
    flags.DEFINE_integer("replica", None, "Of a run of config.train.replicas models, which one "
                         "(0-based; default 0).", flag_values=fv)
    if command == "export":
        flags.DEFINE_string("out", None, "New folder for the Hugging Face directory.", flag_values=fv)
        flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Tensor dtype of the weights.",
                          flag_values=fv)
        flags.DEFINE_string("max_shard_size", "5GB", "Larger weights are sharded into files of at most "
                            "this size, with model.safetensors.index.json.", flag_values=fv)
    if command == "eval":
        flags.DEFINE_integer("batches", 0, "0: the whole validation split (as training's final "
                             "evaluation); N: N x config.train.batch_size windows spread evenly over it.",
                             flag_values=fv)
        flags.DEFINE_string("val_part", None, "Score these validation tokens: all, tune (the first "
                            "half) or test (the second); default: the run's config.data.val_part.",
                            flag_values=fv)
    if command == "sample":
        flags.DEFINE_multi_string("prompt", [], "Prompt text; repeat for several.", flag_values=fv)
        flags.DEFINE_integer("max_new_tokens", None, "Tokens to generate.", flag_values=fv)
        flags.DEFINE_float("temperature", None, "0 for greedy.", flag_values=fv)
        flags.DEFINE_integer("top_k", None, "Keep the k most likely tokens (0: off).", flag_values=fv)
        flags.DEFINE_float("top_p", None, "Nucleus sampling mass (1: off).", flag_values=fv)
        flags.DEFINE_integer("seed", None, "Sampling seed.", flag_values=fv)


def command_flags(command: str, argv: list[str] = ()) -> flags.FlagValues:
    """The flags of one of this module's commands, defined (not parsed) for `argv`."""
    fv = flags.FlagValues()
    _define_flags(command, fv, [f"lmjax {command}", *argv])
    return fv


def flags_help(fv: flags.FlagValues, leave_out: tuple[str, ...] = ()) -> str:
    """The flags of `fv` as absl describes them, less `leave_out`. Copied into a FlagValues of
    no module, so absl prints them without module headings."""
    shown = flags.FlagValues()
    for name in fv:
        if name not in leave_out:
            shown[name] = fv[name]
    return shown.get_help(prefix="  ", include_special_flags=False)


def parse_own_flags(command: str, define, argv: list[str], usage: str) -> tuple[flags.FlagValues, list[str]]:
    """A DELEGATED command's flags (added by `define(fv)`) parsed from `argv`, and the arguments
    left; a bad flag is one error line ending in `usage`."""
    fv = flags.FlagValues()
    define(fv)
    try:
        return fv, fv([f"lmjax {command}"] + list(argv))[1:]
    except flags.Error as e:
        raise LmjaxError(f"{str(e).splitlines()[0]}; {usage}") from None


def delegated_main(argv: list[str] | None, *, define, doc: str, run) -> int:
    """The main of a command with its own parser (DELEGATED): any of HELP prints `doc` and the
    flags `define(fv)` adds; otherwise `run(argv)` (default: sys.argv[1:]), guarded."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in HELP for a in argv):
        fv = flags.FlagValues()
        define(fv)
        print(f"{doc}\nflags:\n{flags_help(fv)}")
        return 0
    return guarded(lambda: run(argv), verbose="--verbose" in argv)


def _config_keys_help(command: str) -> str:
    """One line per --config.KEY a command takes, with its default and help."""
    sections = ({"finetune": config_lib.FinetuneConfig} if command == "finetune"
                else config_lib.SECTIONS)
    lines = [f"  --config.{name}.{f.name}={f.default!r}: {f.metadata['help']}"
             for name, cls in sections.items() for f in config_lib.keys(cls)]
    return "config keys (--config.SECTION.KEY=VALUE; README.md#configs describes them):\n" + "\n".join(lines)


def command_help(command: str) -> str:
    """`lmjax COMMAND --help`: the command's usage line from this module's docstring, its flags
    and the config keys it takes."""
    usage = [line.strip() for line in __doc__.splitlines() if line.strip().startswith(f"lmjax {command} ")]
    fv = command_flags(command)
    if command not in ("train", "prepare", "import", "finetune"):
        return f"usage: {usage[0]}\n\nflags:\n{flags_help(fv)}"
    # train's --config is a file; import's and finetune's is the keys listed after the flags
    inline = () if command in ("train", "prepare") else ("config",)
    return f"usage: {usage[0]}\n\nflags:\n{flags_help(fv, inline)}\n\n{_config_keys_help(command)}"


def check_overrides(argv: list[str]) -> None:
    """Unknown --config.KEY overrides fail here (before config_flags sees them), naming the
    nearest valid key."""
    for arg in argv:
        if arg.startswith("--config."):
            config_lib.check_key(arg[len("--config."):].split("=", 1)[0])


def parse(command: str, argv: list[str]) -> flags.FlagValues:
    if command in ("train", "prepare", "import"):
        check_overrides(argv)
    if command == "finetune":
        for arg in argv:
            if arg.startswith("--config."):
                config_lib.check_finetune_key(arg[len("--config."):].split("=", 1)[0])
    try:
        fv = command_flags(command, argv)
        fv([f"lmjax {command}", *argv])
        if command in ("train", "prepare"):
            if fv.config is None:
                raise ConfigError("no config: pass --config configs/NAME.py")
            fv.config.to_dict()  # config_flags defers loading errors to the first attribute use
    except flags.Error as e:
        raise ConfigError(str(e).splitlines()[0]) from e
    except (OSError, AttributeError, KeyError) as e:
        detail = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise ConfigError(f"cannot load config: {detail[-1] if detail else type(e).__name__}; "
                          "pass --config configs/NAME.py[:ARG] with an existing file") from e
    return fv


def given_keys(fv) -> list[str]:
    """The config keys set on the command line (--config.KEY=VALUE), dotted: 'train.seq_len'."""
    return list(config_flags.get_override_values(fv["config"]))


def _join_and_reset(fv) -> str:
    """Join the job (before any other JAX call), reset other families' keys; the config's file."""
    from lmjax.process.distributed import join_cluster

    join_cluster(force=fv.distributed)  # every process joins one mesh
    config_file = fv["config"].config_filename or "default"
    reset = config_lib.reset_other_family_keys(fv.config, given_keys(fv))
    if reset and _reporter():
        print(f"note: keys of other families than {fv.config.model.family!r} that {config_file} sets, "
              f"reset to their defaults: {', '.join('config.model.' + k for k in reset)}", file=sys.stderr)
    return config_file


def run_prepare(fv) -> int:
    import time

    from lmjax.data.dataset import prepare, summary
    from lmjax.process.distributed import store_job

    _join_and_reset(fv)
    data_cfg = config_lib.resolve(fv.config).data
    t0 = time.perf_counter()
    data = prepare(data_cfg, workers=fv.workers, job=store_job(), ray_address=fv.ray, rebuild=fv.rebuild,
                   progress=fv.progress)
    if _reporter():
        print(json.dumps(summary(data, time.perf_counter() - t0)))
    return 0


def run_train(fv) -> int:
    from lmjax.training.loop import train

    config_file = _join_and_reset(fv)
    name = Path(config_file).stem
    workdir = fv.workdir or f"runs/{name}"
    final = train(fv.config, workdir, progress=fv.progress, force=fv.force)
    import jax

    if not _reporter():  # one job, one report
        return 0
    if final["preempted"]:
        print(f"preempted at step {final['step']}: checkpoint saved in {workdir}; "
              "run the same command to continue", file=sys.stderr)
    elif (fv.config.sample.prompt and fv.config.model.family in config_lib.CAUSAL  # the encoder fills
          and jax.process_count() == 1):  # lmjax.load is one process's: `lmjax sample` after the job
        import lmjax

        prompt = fv.config.sample.prompt
        print(f"--- sample at step {final['step']}:\n{prompt}{lmjax.load(workdir).generate(prompt)}\n---")
    print(json.dumps({"workdir": workdir, **final}))
    return 0


def _load(fv):
    import lmjax
    from lmjax.process.distributed import join_cluster

    join_cluster()  # a multi-process job evaluates and samples as one, too

    if not fv.workdir:
        raise ConfigError("--workdir is required: the folder of a run written by `lmjax train`")
    return lmjax.load(fv.workdir, step=fv.step, replica=fv.replica)


def _reporter() -> bool:
    """Process 0 of a job prints the result (every process restored its own copy of the run)."""
    import jax

    return jax.process_index() == 0


def run_eval(fv) -> int:
    run = _load(fv)
    if not _reporter():
        return 0
    result = run.evaluate(batches=fv.batches, val_part=fv.val_part)
    if run.finetune is not None:  # a classifier: the confusion matrix as a table and a PNG
        from lmjax.training.finetune import CONFUSION_PNG, confusion_table, plot_confusion

        png = Path(fv.workdir) / CONFUSION_PNG
        plot_confusion(result, run.labels, png, f"{run.finetune.task}: {Path(fv.workdir).name}")
        print(confusion_table(result, run.labels))
        print(f"accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f} on "
              f"{result['examples']:,} held-out examples; confusion matrix plotted in {png}")
    result.pop("loss_by_position", None)  # one number per position: for notebooks and the report
    print(json.dumps({"step": run.step, **result}))
    return 0


def run_finetune(fv) -> int:
    from lmjax.training.finetune import finetune

    if not fv.workdir:
        raise ConfigError("--workdir is required: a new folder for the fine-tuned run")
    cfg = fv.config.to_dict()
    for name in ("init", "task"):
        if fv[name].value is not None:
            cfg["finetune"][name] = fv[name].value
    final = finetune(cfg, fv.workdir, force=fv.force)
    final.pop("confusion_matrix")
    print(json.dumps({"workdir": fv.workdir, **final}))
    return 0


def run_export(fv) -> int:
    from lmjax.hf.convert import export_run

    if not fv.workdir or not fv.out:
        raise ConfigError("lmjax export needs --workdir (a run) and --out (a new folder)")
    out = export_run(fv.workdir, fv.out, step=fv.step, max_shard_size=_size(fv.max_shard_size),
                     dtype=fv.dtype, replica=fv.replica)
    print(json.dumps({"out": fv.out, **out}))
    return 0


def _size(text: str) -> int | str:
    return int(text) if text.isdigit() else text  # bytes, or huggingface_hub's '5GB' / '500MB'


def run_import(fv) -> int:
    from lmjax.hf.convert import import_dir

    if not fv["from"].value or not fv.workdir:
        raise ConfigError("lmjax import needs --from (a Hugging Face directory) and --workdir (a new folder)")
    overrides = {}
    for dotted in given_keys(fv):  # those on the command line, even at their schema default
        section, k = dotted.split(".", 1)
        overrides.setdefault(section, {})[k] = fv.config[section][k]
    out = import_dir(fv["from"].value, fv.workdir, overrides=overrides)
    print(json.dumps({"workdir": fv.workdir, **out}))
    return 0


def run_sample(fv) -> int:
    if not fv.prompt:
        raise ConfigError('--prompt is required, e.g. --prompt "def main("; repeat it for several')
    run = _load(fv)
    if not _reporter():
        return 0
    outputs = run.generate(
        list(fv.prompt), max_new_tokens=fv.max_new_tokens, temperature=fv.temperature,
        top_k=fv.top_k, top_p=fv.top_p, seed=fv.seed,
    )
    for prompt, out in zip(fv.prompt, outputs):
        print(f"--- prompt: {prompt!r}\n{prompt}{out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command in DELEGATED:
        import importlib

        return importlib.import_module(DELEGATED[command]).main(rest)
    if any(a in HELP for a in rest):
        print(command_help(command))
        return 0
    commands = {"train": run_train, "prepare": run_prepare, "eval": run_eval, "sample": run_sample, "finetune": run_finetune,
                "export": run_export, "import": run_import}
    return guarded(lambda: commands[command](parse(command, rest)), verbose="--verbose" in rest)


def guarded(fn, *, verbose: bool) -> int:
    """Run a command: a user error is one `error:` line and status 2 (a traceback only with
    --verbose); Ctrl-C is status 130. Every lmjax command goes through here."""
    if not verbose:  # library logs (orbax's background-thread tracebacks) only with --verbose
        logging.getLogger("absl").setLevel(logging.CRITICAL)
    try:
        return fn()
    except LmjaxError as e:
        if verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    from lmjax.cli import entry

    entry()
