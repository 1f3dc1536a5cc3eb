"""nanoGPT's PyTorch step profiled per kernel class: the child that benchmarks/kernel_classes.py
starts under the PyTorch interpreter (the venv of benchmarks/nanogpt_reference.py).

    /tmp/torchvenv/bin/python benchmarks/kernel_classes_torch.py --shape baby [--steps 20] [--warmup 5]

The model and step are nanogpt_reference.py's `make_step` (imported by path: forward, backward,
clip 1.0, AdamW with decay on 2-D weights, 2 threads, float32, eager), with the clip, the AdamW
update and zero_grad inside one `record_function` scope so that every op they run counts as
optimizer, whatever its name (on CPU AdamW runs per-tensor `aten::mul_`, `addcdiv_`, ..., not
`_foreach_*`), and so does the scope's own self time: the Python of clip and `opt.step()` between
their ops. After `--warmup` steps, `torch.profiler.profile` records one step that its schedule
drops (the profiler's start-up slows it) and then `--steps` steps; each event's self CPU time
(its own, its children's excluded) is summed per class and divided by the steps. Prints one
JSON line.

The classes' names are defined here, and benchmarks/kernel_classes.py imports them from here: this
file runs under the PyTorch venv, which has none of lmjax's dependencies, so it imports nothing
but the standard library at module level (torch only in `main`; the tests import this module
without torch).
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import statistics
import time
from pathlib import Path

MATMUL = "matmul (2-D dots)"
BATCHED = "batched matmul (attention)"
SOFTMAX = "softmax/reductions"
ELEMENTWISE = "elementwise fusions"
LAYOUT = "layout copies/transposes"
GATHER = "gather/scatter (embeddings)"
OPTIMIZER = "optimizer (AdamW update)"
OTHER = "other"
CLASSES = (MATMUL, BATCHED, SOFTMAX, ELEMENTWISE, LAYOUT, GATHER, OPTIMIZER, OTHER)

OPTIMIZER_SCOPE = "kernel_classes::optimizer"
TOP = 5  # kernels (here: op names) listed per class in the record

# aten op names (without "aten::") per class. SDPA on CPU is one fused flash kernel (its dots,
# mask and softmax together), counted as batched matmul: it cannot be split further.
_ATEN = {
    MATMUL: {"mm", "addmm", "linear", "matmul", "addmv", "mv", "dot", "_addmm_activation"},
    BATCHED: {"bmm", "baddbmm", "scaled_dot_product_attention", "_scaled_dot_product_attention_math",
              "_scaled_dot_product_flash_attention_for_cpu",
              "_scaled_dot_product_flash_attention_for_cpu_backward",
              "_scaled_dot_product_efficient_attention", "_efficient_attention_forward",
              "_efficient_attention_backward", "_flash_attention_forward", "_flash_attention_backward"},
    SOFTMAX: {"softmax", "_softmax", "log_softmax", "_log_softmax", "_softmax_backward_data",
              "_log_softmax_backward_data", "cross_entropy_loss", "nll_loss", "nll_loss_nd",
              "nll_loss_forward", "nll_loss_backward", "nll_loss2d_forward", "nll_loss2d_backward",
              "sum", "mean", "norm", "linalg_vector_norm", "amax", "amin", "max", "min", "logsumexp",
              "layer_norm", "native_layer_norm", "native_layer_norm_backward", "rms_norm",
              "_fused_rms_norm", "_fused_rms_norm_backward", "var", "std", "var_mean", "prod",
              "cumsum", "argmax"},
    LAYOUT: {"copy_", "contiguous", "clone", "transpose", "transpose_", "permute", "view", "reshape",
             "_reshape_alias", "t", "expand", "expand_as", "as_strided", "_unsafe_view", "split",
             "split_with_sizes", "chunk", "slice", "select", "unsqueeze", "squeeze", "flatten",
             "cat", "stack", "narrow", "detach", "detach_", "alias", "unbind", "_to_copy", "to",
             "unfold", "repeat", "_unsafe_split", "resolve_conj", "resolve_neg", "numpy_T"},
    GATHER: {"embedding", "embedding_backward", "embedding_dense_backward", "index_select", "gather",
             "scatter", "scatter_", "scatter_add", "scatter_add_", "index_add", "index_add_",
             "index_put", "index_put_", "_index_put_impl_", "index", "take_along_dim",
             "embedding_renorm_"},
    ELEMENTWISE: {"add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "neg", "neg_",
                  "gelu", "gelu_backward", "relu", "threshold_backward", "silu", "silu_backward",
                  "tanh", "tanh_backward", "sigmoid", "sigmoid_backward", "exp", "exp_", "log",
                  "sqrt", "sqrt_", "rsqrt", "pow", "pow_", "reciprocal", "abs", "sign", "clamp",
                  "clamp_", "clamp_min", "clamp_max", "where", "masked_fill", "masked_fill_",
                  "addcmul", "addcmul_", "addcdiv", "addcdiv_", "lerp", "lerp_", "fill_", "zero_",
                  "zeros_like", "ones_like", "full_like", "triu", "tril", "eq", "ne", "lt", "gt",
                  "le", "ge", "logical_not", "isfinite", "isnan", "mul_scalar", "maximum", "minimum",
                  "cos", "sin", "erf"},
}
_BY_NAME = {op: cls for cls, ops in _ATEN.items() for op in ops}


def classify_aten(name: str, *, in_optimizer: bool = False, in_attention: bool = False) -> str:
    """The class of a profiler event: every op inside the optimizer scope is optimizer; `_foreach_*`
    and fused Adam ops are optimizer anywhere; `aten::matmul` (a dispatcher) inside attention is
    batched matmul; then by the aten name; events that are not aten ops (autograd nodes, record
    functions) are other."""
    if in_optimizer:
        return OPTIMIZER
    if not name.startswith("aten::"):
        return OTHER
    op = name[len("aten::"):]
    if op.startswith("_foreach_") or "adam" in op:
        return OPTIMIZER
    if op in ("matmul", "linear") and in_attention:
        return BATCHED
    return _BY_NAME.get(op, OTHER)


def _is_attention(name: str) -> bool:
    return "scaled_dot_product" in name.lower() or "ScaledDotProduct" in name


def class_times(events, steps: int) -> tuple[dict, dict]:
    """ms per step per class from profiler events (`name`, `self_cpu_time_total` in us,
    `cpu_parent`), and the TOP op names of each class by time."""
    per_class = collections.Counter()
    per_name = collections.defaultdict(collections.Counter)
    for e in events:
        ancestors, p = [], e.cpu_parent
        while p is not None:
            ancestors.append(p.name)
            p = p.cpu_parent
        cls = classify_aten(e.name, in_optimizer=OPTIMIZER_SCOPE in ancestors or e.name == OPTIMIZER_SCOPE,
                            in_attention=any(map(_is_attention, ancestors)))
        ms = e.self_cpu_time_total / 1e3 / steps
        per_class[cls] += ms
        per_name[cls][e.name] += ms
    classes = {c: per_class.get(c, 0.0) for c in CLASSES}
    top = {c: [[n, ms] for n, ms in per_name[c].most_common(TOP)] for c in CLASSES if per_name[c]}
    return classes, top


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="baby")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)  # as nanogpt_reference.py
    args = p.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function, schedule

    spec = importlib.util.spec_from_file_location("nanogpt_reference",
                                                  Path(__file__).with_name("nanogpt_reference.py"))
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    s = ref.SHAPES[args.shape]
    step = ref.make_step(args.shape, args.threads, lambda: record_function(OPTIMIZER_SCOPE))

    def timed(n):
        times = []
        for _ in range(n):
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) * 1e3)
        return times

    unprofiled = timed(args.warmup)
    # One traced step first, dropped by the schedule: the profiler's own start-up slows it.
    with profile(activities=[ProfilerActivity.CPU],
                 schedule=schedule(wait=0, warmup=1, active=args.steps, repeat=1)) as prof:
        step()
        prof.step()
        profiled = []
        for _ in range(args.steps):
            profiled += timed(1)
            prof.step()
    # ProfilerStep#N's (or ProfilerStep*'s) self time is the Python between the ops: not an op.
    events = [e for e in prof.events() if not e.name.startswith("ProfilerStep")]
    classes, top = class_times(events, args.steps)
    print(json.dumps({
        "shape": args.shape, **s, "steps": args.steps, "warmup": args.warmup,
        "step_ms_mean": statistics.fmean(profiled), "step_ms": profiled,
        # the warm-up steps, without the profiler (the first ones include PyTorch's own warm-up)
        "step_ms_unprofiled_median": statistics.median(unprofiled[1:] or unprofiled) if unprofiled else None,
        "kernel_ms": sum(classes.values()), "classes": classes, "top": top,
        "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
