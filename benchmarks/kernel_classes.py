"""Where one train step's time goes, per kernel class: lmjax against nanoGPT's PyTorch step, same host.

    python -m benchmarks.kernel_classes --shape baby --torch_python /tmp/torchvenv/bin/python \
        [--steps 20] [--warmup 5] [--trace_dir DIR] [--no_append]

lmjax: the train step of `benchmarks.vs_nanogpt`'s harness run for the shape (same config file
and overrides, synthetic batch, one CPU device), compiled ahead of time so that the HLO text and
the executable that runs are the same program; `--warmup` steps, then `jax.profiler.trace(dir,
create_perfetto_trace=True)` around one step (dropped: the tracer's start-up slows it) and
`--steps` synchronised steps. In the perfetto trace XLA:CPU's thunk executor names each kernel
after its HLO instruction (`args.hlo_op`, with `run_id` per execution); each event's self time
(its duration less the kernels nested in it on its thread) is summed per class, the class read off
the instruction in the compiled HLO: its opcode, or for a fusion the opcodes of its fused
computation, and the Python stack JAX recorded for it (StackFrames), which tells the optimizer's
ops (optax's `update` functions) and softmax (a source line calling `softmax(`, the loss's
`softmax_cross_entropy`) from the rest. Control-flow thunks (the optimizer's `conditional`) only
contain kernels and are not counted themselves. Kernels of XLA's threads run concurrently, so the
summed kernel time can exceed the step's wall time; `busy` is the union of their intervals.

PyTorch: benchmarks/kernel_classes_torch.py in the torch venv (nanogpt_reference.py's model and
step, 2 threads, without lmjax's malloc tunables), `torch.profiler` around the same number of
steps (after one it drops), ops' self CPU time per class. Both sides' step times are those of
the profiled steps (the profilers' overhead included); the JSON record also has unprofiled ones.

Writes `benchmarks/results/<date>-kernel_classes-<shape>.json` and, unless --no_append, a table of
this run in the "Per kernel class" section of RESULTS.md: ms per step per class, the share of the
step's wall time in brackets, and ratio = PyTorch ms / lmjax ms (> 1: lmjax spends less there).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import linecache
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from absl import flags

from benchmarks import cli, records
from benchmarks.kernel_classes_torch import (BATCHED, CLASSES, ELEMENTWISE, GATHER, LAYOUT, MATMUL,
                                             OPTIMIZER, OTHER, SOFTMAX, TOP)
from benchmarks.vs_nanogpt import SHAPES as VS_SHAPES
from lmjax.errors import ConfigError

TORCH_CHILD = Path(__file__).with_name("kernel_classes_torch.py")
CONTROL = "control flow"  # containers of other kernels: not a class, not counted

# ---- the compiled HLO module ----

_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[^\s(]+)\s*\(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT\s+)?%?(?P<name>[^\s=]+)\s*=\s*(?P<rest>.*)$")
_OPCODE = re.compile(r"\s*(?P<opcode>[\w\-]+)\(")
_CALLED = re.compile(r"\b(?:calls|branch_computations|body|condition|to_apply|true_computation|"
                     r"false_computation)=(\{[^}]*\}|%?[\w.\-]+)")
_FRAME_ID = re.compile(r"stack_frame_id=(\d+)")
_TABLE_ROW = re.compile(r"^(\d+)\s+(.*)$")
_FIELDS = re.compile(r"(\w+)=(\d+)")


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    opcode: str
    text: str  # the line after the opcode: operands and attributes
    calls: tuple[str, ...]  # computations it calls: fusion bodies, branches, loop bodies
    frame: int | None  # stack_frame_id of its metadata

    @property
    def batch_dims(self) -> bool:
        return "lhs_batch_dims=" in self.text


@dataclasses.dataclass
class HloModule:
    """What classification needs from `compiled.as_text()`."""
    name: str
    instructions: dict[str, Instruction]
    computations: dict[str, list[str]]  # name -> its instructions' names
    roots: dict[str, str]  # computation -> its ROOT instruction
    frames: dict[int, tuple[int, int]]  # stack frame id -> (file location id, parent frame id or 0)
    locations: dict[int, tuple[str, str, int]]  # file location id -> (file, function, line)

    def stack(self, frame: int | None) -> list[tuple[str, str, int]]:
        """(file, function, line) of a stack frame and its callers, innermost first."""
        out, seen = [], set()
        while frame and frame in self.frames and frame not in seen:
            seen.add(frame)
            loc, frame = self.frames[frame]
            if loc in self.locations:
                out.append(self.locations[loc])
        return out


def _skip_shape(rest: str) -> str:
    """The text after an instruction's shape (a tuple shape is parenthesised and has spaces)."""
    if not rest.startswith("("):
        return rest.split(" ", 1)[1] if " " in rest else ""
    depth = 0
    for i, ch in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return rest[i + 1:]
    return ""


def parse_hlo(text: str) -> HloModule:
    """Instructions, computations and the stack-frame tables of an HLO module's text."""
    name = ""
    instructions, computations, roots = {}, {}, {}
    tables = collections.defaultdict(dict)  # FileNames, FunctionNames, FileLocations, StackFrames
    section, current = None, None
    for line in text.splitlines():
        if line.startswith("HloModule "):
            name = line.split()[1].rstrip(",")
            continue
        if line.strip() in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section, current = line.strip(), None
            continue
        if line.startswith("}"):
            current = None
            continue
        if current is None and (m := _COMPUTATION.match(line)):
            section, current = None, m["name"]
            computations[current] = []
            continue
        if current is not None and (m := _INSTRUCTION.match(line)):
            after = _skip_shape(m["rest"])
            op = _OPCODE.match(after)
            if not op:
                continue
            calls = tuple(c.strip().lstrip("%") for group in _CALLED.findall(after)
                          for c in group.strip("{}").split(",") if c.strip())
            frame = _FRAME_ID.search(after)
            ins = Instruction(m["name"], op["opcode"], after[op.end():], calls,
                              int(frame[1]) if frame else None)
            instructions[ins.name] = ins
            computations[current].append(ins.name)
            if line.lstrip().startswith("ROOT "):
                roots[current] = ins.name
            continue
        if section and (m := _TABLE_ROW.match(line.strip())):
            value = m[2].strip()
            tables[section][int(m[1])] = (value[1:-1] if value.startswith('"')
                                          else {k: int(v) for k, v in _FIELDS.findall(value)})
    files, functions = tables["FileNames"], tables["FunctionNames"]
    locations = {i: (files.get(f.get("file_name_id"), ""), functions.get(f.get("function_name_id"), ""),
                     f.get("line", 0)) for i, f in tables["FileLocations"].items()}
    raw = {i: (f.get("file_location_id", 0), f.get("parent_frame_id", 0))
           for i, f in tables["StackFrames"].items()}
    # This XLA prints a frame's parent as its id + 1 (0: none), so a root frame reads as its own
    # parent; an XLA that prints ids as they are never shows a frame as its own parent.
    shift = 1 if any(parent == i for i, (_, parent) in raw.items()) else 0
    frames = {i: (loc, max(parent - shift, 0)) for i, (loc, parent) in raw.items()}
    return HloModule(name, instructions, computations, roots, frames, locations)


# ---- classifying an instruction ----

CONTAINERS = {"conditional", "while", "call", "async-start", "async-update", "async-done"}
TRIVIAL = {"parameter", "constant", "tuple", "get-tuple-element"}
MOVES = {"copy", "transpose", "bitcast", "reshape", "broadcast", "slice", "concatenate", "pad",
         "dynamic-slice", "dynamic-update-slice", "reverse", "copy-start", "copy-done"}
REDUCTIONS = {"reduce", "reduce-window", "all-reduce", "reduce-scatter"}
GATHERS = {"gather", "scatter"}
DOTS = {"dot", "convolution"}
# Neither arithmetic on elements nor data movement: library calls, sorting, random bits, I/O.
OTHERS = {"custom-call", "sort", "rng", "rng-bit-generator", "rng-get-and-update-state", "infeed",
          "outfeed", "send", "recv", "send-done", "recv-done", "after-all", "partition-id",
          "replica-id", "all-gather", "all-to-all", "collective-permute", "top-k"}


def _fused(module: HloModule, ins: Instruction) -> list[Instruction]:
    """The instructions of the computations `ins` calls, recursively (nested fusions)."""
    out, todo, seen = [], list(ins.calls), set()
    while todo:
        comp = todo.pop()
        if comp in seen:
            continue
        seen.add(comp)
        for name in module.computations.get(comp, ()):
            sub = module.instructions[name]
            out.append(sub)
            todo.extend(sub.calls)
    return out


def is_optimizer(stack: Iterable[tuple[str, str, int]]) -> bool:
    """Traced by the optimizer: inside an optax `update` function (clip, Adam moments, weight
    decay, schedule, apply_if_finite, apply_updates) or lmjax's optimizer module. optax's other
    helpers are not enough: the metrics' grad norm (optax.tree.norm) and the loss (optax.losses)
    are not the optimizer."""
    for file, function, _ in stack:
        path = file.replace("\\", "/")
        if path.endswith("lmjax/training/optimizer.py"):
            return True
        if "/optax/" in path and "/optax/losses/" not in path and "update" in function:
            return True
    return False


def is_softmax(stack: Sequence[tuple[str, str, int]]) -> bool:
    """Part of a softmax: inside optax's softmax cross entropy or a log_softmax/logsumexp
    function, or traced from a source line that calls softmax (JAX records user frames only, so
    jax.nn.softmax's own ops point at the caller's line)."""
    if any(any(s in function for s in ("softmax_cross_entropy", "log_softmax", "logsumexp"))
           for _, function, _ in stack):
        return True
    if stack:
        file, _, line = stack[0]
        source = linecache.getline(file, line) if file and line else ""
        return "softmax(" in source or "logsumexp(" in source
    return False


def classify_instruction(module: HloModule, name: str) -> str:
    """The class of the kernel XLA named `name` (None-safe: a name not in the module is OTHER)."""
    ins = module.instructions.get(name)
    if ins is None:
        return OTHER
    if ins.opcode in CONTAINERS:
        return CONTROL
    body = _fused(module, ins) if ins.opcode == "fusion" else []
    frame = ins.frame
    if frame is None and ins.calls:  # a fusion without metadata: its root's
        root = module.instructions.get(module.roots.get(ins.calls[0], ""))
        frame = root.frame if root else None
    stack = module.stack(frame)
    if is_optimizer(stack):
        return OPTIMIZER
    ops = [ins] + body if ins.opcode != "fusion" else body
    dots = [i for i in ops if i.opcode in DOTS
            or (i.opcode == "custom-call" and re.search(r"matmul|dot|gemm", i.text, re.I))]
    if dots:
        return BATCHED if any(d.batch_dims for d in dots) else MATMUL
    opcodes = {i.opcode for i in ops} - TRIVIAL
    if is_softmax(stack) or opcodes & REDUCTIONS:
        return SOFTMAX
    if opcodes & GATHERS:
        return GATHER
    if opcodes & OTHERS:
        return OTHER
    if opcodes <= MOVES:
        return LAYOUT
    return ELEMENTWISE


# ---- the perfetto trace ----

def load_trace(trace_dir: str | Path) -> dict:
    """The perfetto JSON trace jax.profiler.trace(create_perfetto_trace=True) wrote under the dir."""
    paths = sorted(glob.glob(str(Path(trace_dir) / "**" / "*.trace.json.gz"), recursive=True))
    if not paths:
        raise ConfigError(f"no perfetto trace (*.trace.json.gz) under {trace_dir}")
    with gzip.open(paths[-1], "rt") as f:
        return json.load(f)


def kernel_events(trace: dict, module_name: str) -> list[dict]:
    """The complete ('X') events of the module's kernels: XLA:CPU's thunk executor names them
    after the HLO instruction and sets args.hlo_op ("end: NAME" events, the completion callbacks
    nested in them, carry no hlo_op)."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return [e for e in events if e.get("ph") == "X" and (e.get("args") or {}).get("hlo_op")
            and e["args"].get("hlo_module", module_name) == module_name]


def last_runs(events: list[dict], n: int) -> list[dict]:
    """The events of the last `n` executions (args.run_id, ordered by their first event)."""
    first = {}
    for e in events:
        run = e["args"].get("run_id")
        first[run] = min(first.get(run, e["ts"]), e["ts"])
    keep = set(sorted(first, key=first.get)[-n:])
    return [e for e in events if e["args"].get("run_id") in keep]


def self_times(events: list[dict]) -> list[tuple[dict, float]]:
    """(event, its duration less the durations of the events nested in it on the same thread), us."""
    out = []
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[(e.get("pid"), e.get("tid"))].append(e)
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[list] = []  # [event, end, self]
        for e in evs:
            end = e["ts"] + e["dur"]
            while stack and stack[-1][1] <= e["ts"]:
                out.append(tuple(stack.pop()[::2]))
            if stack:
                stack[-1][2] -= e["dur"]
            stack.append([e, end, float(e["dur"])])
        out.extend(tuple(s[::2]) for s in stack)
    return out


def union_us(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length covered by (start, end) intervals."""
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    return total + (cur_end - cur_start if cur_end is not None else 0.0)


def summarise(events: list[dict], module: HloModule, steps: int) -> dict:
    """ms per step per class, the TOP kernels of each class, the summed and the busy (union)
    kernel time, and the kernel names the module does not have."""
    per_class, per_name = collections.Counter(), collections.defaultdict(collections.Counter)
    counted, unmapped, control_ms = [], collections.Counter(), 0.0
    cls_of = {}
    for e, self_us in self_times(events):
        name = e["args"]["hlo_op"]
        if name not in cls_of:
            cls_of[name] = classify_instruction(module, name)
        cls, ms = cls_of[name], self_us / 1e3 / steps
        if cls == CONTROL:
            control_ms += ms
            continue
        if name not in module.instructions:
            unmapped[name] += 1
        per_class[cls] += ms
        per_name[cls][name] += ms
        counted.append((e["ts"], e["ts"] + e["dur"]))
    return {
        "classes": {c: per_class.get(c, 0.0) for c in CLASSES},
        "top": {c: [[n, ms] for n, ms in per_name[c].most_common(TOP)] for c in CLASSES if per_name[c]},
        "kernel_ms": sum(per_class.values()), "busy_ms": union_us(counted) / 1e3 / steps,
        "control_flow_ms": control_ms, "unmapped": sorted(unmapped),
        "runs_in_trace": len({e["args"].get("run_id") for e in events}),
        "kernels_per_step": len(counted) / steps,
    }


# ---- the lmjax side ----

def _log(msg: str) -> None:
    print(f"[kernel_classes] {msg}", file=sys.stderr, flush=True)


def profile_lmjax(config, *, steps: int, warmup: int, devices, seed: int = 0,
                  trace_dir: str | None = None) -> dict:
    """Profile `steps` train steps of the resolved `config` on `devices` (one CPU device) after
    `warmup`, as the harness builds the step (synthetic batch, its vocabulary)."""
    import jax
    import numpy as np

    from benchmarks.harness import SYNTHETIC_VOCAB
    from lmjax.training import sharding
    from lmjax.training.steps import make_setup

    vocab = config.data.vocab_size if config.data.vocab_size > 0 else SYNTHETIC_VOCAB
    mesh = sharding.make_mesh(config.mesh, devices)
    setup = make_setup(config, vocab_size=vocab, mesh=mesh)
    batch = setup.put_batch(np.random.default_rng(seed).integers(0, vocab, size=setup.batch_shape,
                                                                 dtype=np.int32))
    state = jax.block_until_ready(setup.init_state(seed))
    t = time.perf_counter()
    with setup.context():
        # Run this very executable, so the names in the trace are those of this HLO text.
        compiled = setup.jit_train_step.lower(state, batch).compile()
    module = parse_hlo(compiled.as_text())
    _log(f"compiled {module.name} in {time.perf_counter() - t:.1f} s: "
         f"{len(module.instructions)} instructions")

    def timed(n):
        nonlocal state
        times = []
        for _ in range(n):
            t = time.perf_counter()
            state, _ = jax.block_until_ready(compiled(state, batch))
            times.append((time.perf_counter() - t) * 1e3)
        return times

    unprofiled = timed(warmup + 1)[1:]  # the first step's extra start-up left out
    with tempfile.TemporaryDirectory(prefix="lmjax-kernel-classes-") as tmp:
        out = trace_dir or tmp
        with jax.profiler.trace(out, create_perfetto_trace=True):
            timed(1)  # dropped below: the tracer's start-up slows the first step
            profiled = timed(steps)
        trace = load_trace(out)
    events = last_runs(kernel_events(trace, module.name), steps)
    if not events:
        raise ConfigError(f"the trace has no kernel events of {module.name} (args.hlo_op): this "
                          "jaxlib's profiler names XLA:CPU's kernels differently")
    summary = summarise(events, module, steps)
    if summary["runs_in_trace"] != steps:
        _log(f"warning: {summary['runs_in_trace']} executions of {module.name} kept from the "
             f"trace, {steps} steps timed")
    if summary["unmapped"]:
        _log(f"warning: {len(summary['unmapped'])} kernel names not in the HLO (class 'other'): "
             f"{summary['unmapped'][:5]}")
    return {"step_ms_mean": statistics.fmean(profiled), "step_ms": profiled,
            "step_ms_unprofiled_median": statistics.median(unprofiled) if unprofiled else None,
            "hlo_module": module.name, "instructions": len(module.instructions), **summary}


# ---- the PyTorch side ----

def profile_torch(python: str, shape: str, *, steps: int, warmup: int) -> dict:
    """benchmarks/kernel_classes_torch.py under `python`, without lmjax's malloc tunables (as
    vs_nanogpt runs the reference by default)."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    return cli.run_json([python, str(TORCH_CHILD), "--shape", shape, "--steps", str(steps),
                         "--warmup", str(warmup)], env)


# ---- RESULTS.md ----

TITLE = "## Per kernel class: lmjax against nanoGPT's PyTorch step"
NOTES = """\
One table per run of `python -m benchmarks.kernel_classes` (see benchmarks/README.md): N
profiled train steps of each side on the same host, back to back, the models as in the "CPU
throughput against nanoGPT" table (lmjax: RoPE + RMSNorm, 256 synthetic ids; nanoGPT: learned
positions + LayerNorm, 65). lmjax: `jax.profiler` trace of the AOT-compiled step (the harness's,
one CPU device), XLA:CPU's kernels (named after HLO instructions) classed by their HLO opcodes and
the Python stack JAX recorded (optimizer: optax's update functions, clipping included; softmax:
the attention's and the loss's), self time summed over XLA's threads. PyTorch: `torch.profiler`,
ops' self CPU time (nanogpt_reference.py's step, 2 threads; everything inside clip + `opt.step()`
+ `zero_grad` is optimizer, their Python between ops included; SDPA is one fused kernel, its
mask and softmax included, so it all counts as batched matmul; LayerNorm's kernels count whole
as reductions). ms per step, the share of that side's profiled step wall time in brackets
(lmjax's shares can add to more than 100%: its kernels run on two threads at once); ratio =
PyTorch ms / lmjax ms (> 1: lmjax spends less time there).
"""


def table_lines(rec: dict) -> list[str]:
    """The run's table: a row per class, then the totals and the step times."""
    lm, pt = rec["lmjax"], rec.get("torch")

    def cell(side: dict | None, ms: float | None, share: bool = True) -> str:
        if side is None or ms is None:
            return "-"
        return f"{ms:,.2f}" + (f" ({ms / side['step_ms_mean']:.0%})" if share else "")

    def ratio(a: float | None, b: float | None) -> str:
        return f"{b / a:.2f}x" if a and b is not None else "-"

    rows = [f"| {c} | {cell(lm, lm['classes'][c])} | {cell(pt, pt['classes'][c] if pt else None)} "
            f"| {ratio(lm['classes'][c], pt['classes'][c] if pt else None)} |" for c in CLASSES]
    totals = [("sum of kernels (lmjax: over its threads; PyTorch: ops' self time)", "kernel_ms", True),
              ("lmjax kernels busy (union over threads)", "busy_ms", True),
              ("step wall time, profiled (mean)", "step_ms_mean", False),
              ("step wall time, unprofiled (median)", "step_ms_unprofiled_median", False)]
    for label, key, share in totals:
        b = pt.get(key) if pt and key != "busy_ms" else None
        rows.append(f"| **{label}** | {cell(lm, lm.get(key), share)} | {cell(pt, b, share)} "
                    f"| {ratio(lm.get(key), b)} |")
    return ["| class | lmjax ms/step | PyTorch ms/step | ratio |", "|---|---|---|---|", *rows]


def run_table(rec: dict) -> str:
    """This run's block in RESULTS.md: a heading (date, host, shape), the command, the table."""
    head = (f"### {records._row_date(rec)}, {records._host(rec)}, {rec['shape']} shape, "
            f"{rec['steps']} profiled steps")
    return "\n".join([head, "", f"`{rec['command']}`", "", *table_lines(rec)])


def append_run(path: Path, rec: dict) -> None:
    """Add this run's block at the end of the section (created at the end of the file)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if TITLE not in text.splitlines():
        text = text.rstrip("\n") + f"\n\n{TITLE}\n\n{NOTES}"
    lines = text.splitlines()
    at = lines.index(TITLE) + 1
    while at < len(lines) and not lines[at].startswith("## "):
        at += 1
    while at > 0 and not lines[at - 1].strip():
        at -= 1
    block = ["", *run_table(rec).splitlines()]
    lines[at:at] = block + ([""] if at < len(lines) else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


@dataclasses.dataclass(frozen=True)
class RunTable(records.Table):
    """A table per run (records.Table adds a row to one table)."""

    def add(self, path: Path, rec: dict) -> None:
        append_run(path, rec)


KERNEL_CLASSES = RunTable(TITLE, NOTES, run_table)


# ---- the command ----

def config_args(shape_args: Sequence[str]) -> list[str]:
    """`--config FILE` and the `--config.KEY=VAL` overrides of a harness command line."""
    i = list(shape_args).index("--config")
    return ["--config", shape_args[i + 1], *cli.config_overrides(list(shape_args))]


def _define_flags(fv: flags.FlagValues, shapes: Mapping[str, Sequence[str]]) -> None:
    flags.DEFINE_enum("shape", next(iter(shapes)), list(shapes),
                      "nanoGPT's CPU shape (as benchmarks.vs_nanogpt).", flag_values=fv)
    flags.DEFINE_integer("steps", 20, "Profiled train steps per side.", flag_values=fv)
    flags.DEFINE_integer("warmup", 5, "Unprofiled steps before them (lmjax: after the first).",
                         flag_values=fv)
    flags.DEFINE_string("torch_python", "/tmp/torchvenv/bin/python",
                        "The PyTorch interpreter; empty: lmjax only.", flag_values=fv)
    flags.DEFINE_string("trace_dir", "", "Keep lmjax's trace here (for Perfetto); default: a "
                        "temporary folder, deleted.", flag_values=fv)
    records.define_flags(fv, label=False)


def main(argv=None, *, shapes: Mapping[str, Sequence[str]] | None = None) -> dict:
    """`shapes`: shape name -> harness command line with `--config` and overrides (default: those
    of benchmarks.vs_nanogpt); the torch child knows the shapes by name."""
    argv = sys.argv[1:] if argv is None else list(argv)
    shapes = shapes or {k: harness for k, (harness, _) in VS_SHAPES.items()}
    fv = cli.parse("benchmarks.kernel_classes", __doc__, argv, lambda fv: _define_flags(fv, shapes))
    if fv.steps < 1 or fv.warmup < 0:
        raise ConfigError("--steps must be >= 1 and --warmup >= 0")
    if fv.torch_python and not Path(fv.torch_python).exists():
        raise ConfigError(f"no PyTorch interpreter at {fv.torch_python}; see benchmarks/README.md")
    cargs = config_args(shapes[fv.shape])
    cfv = cli.parse("benchmarks.kernel_classes", __doc__, cargs, lambda fv: None, config="required")
    from lmjax import config as config_lib

    config = config_lib.resolve(cfv.config)

    import jax

    devices = jax.devices()[:1]
    if devices[0].platform == "cpu" and len(jax.devices()) > 1:
        _log(f"warning: {len(jax.devices())} CPU devices (fake devices from XLA_FLAGS?): profiling "
             "the first; CPU timings are only meaningful with one")
    load = records.load_avg()
    if load is not None and load > 1:
        _log(f"warning: load average {load:.2f} > 1: other processes share the CPU")
    _log(f"lmjax: {' '.join(cargs)}, {fv.warmup} + {fv.steps} steps")
    lm = profile_lmjax(config, steps=fv.steps, warmup=fv.warmup, devices=devices,
                       trace_dir=fv.trace_dir or None)
    pt = None
    if fv.torch_python:
        _log(f"PyTorch: {TORCH_CHILD.name} --shape {fv.shape}")
        pt = profile_torch(fv.torch_python, fv.shape, steps=fv.steps, warmup=fv.warmup)
    fields = {"shape": fv.shape, "steps": fv.steps, "warmup": fv.warmup, "config_args": cargs,
              "command": shlex.join(["python", "-m", "benchmarks.kernel_classes", *argv]),
              "lmjax": lm, "torch": pt,
              "ratio": ({c: (pt["classes"][c] / lm["classes"][c] if lm["classes"][c] else None)
                         for c in CLASSES} if pt else None)}
    print("\n".join(table_lines(fields)), flush=True)  # the record stays the last stdout line
    return records.save_record(fields, f"kernel_classes-{fv.shape}", fv, KERNEL_CLASSES,
                               load=load, devices=devices)


if __name__ == "__main__":
    from lmjax.process import setup_command_process

    setup_command_process(compile_cache=False)  # as `lmjax` runs (XLA flags, malloc tunables)
    cli.run(main)
