"""benchmarks/kernel_classes.py: the HLO and aten classifiers on hand-written inputs, the trace
arithmetic on hand-made events, and one tiny profiled run of each side."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `benchmarks` is a folder of the checkout, not an installed package
    sys.path.insert(0, str(REPO))
from benchmarks import kernel_classes as kc  # noqa: E402
from benchmarks import kernel_classes_torch as kct  # noqa: E402

# An HLO module as compiled.as_text() prints it, cut down: a 2-D and a batched dot, a reduce, an
# elementwise and a transpose fusion, a gather, an optimizer fusion inside a conditional's branch
# (stack frame 4 -> 3 -> 1: optax's update_fn), the loss (frame 5: softmax_cross_entropy) and the
# metrics' grad norm (frame 6: optax's tree_norm, not an update function, so not the optimizer).
# This XLA prints a frame's parent as id + 1, so root frames read as their own parents.
HLO = """\
HloModule jit_train_step, is_scheduled=true, entry_computation_layout={(f32[64,32]{1,0})->f32[]}

FileNames
1 "/work/main/lmjax/training/steps.py"
2 "/venv/lib/python3.11/site-packages/optax/transforms/_clipping.py"
3 "/venv/lib/python3.11/site-packages/optax/losses/_classification.py"
4 "/venv/lib/python3.11/site-packages/optax/tree_utils/_tree_math.py"

FunctionNames
1 "make_train_step.<locals>.train_step"
2 "clip_by_global_norm.<locals>.update_fn"
3 "softmax_cross_entropy_with_integer_labels"
4 "tree_norm"

FileLocations
1 {file_name_id=1 function_name_id=1 line=10 end_line=10 column=1 end_column=2}
2 {file_name_id=2 function_name_id=2 line=20 end_line=20 column=1 end_column=2}
3 {file_name_id=3 function_name_id=3 line=30 end_line=30 column=1 end_column=2}
4 {file_name_id=4 function_name_id=4 line=40 end_line=40 column=1 end_column=2}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=1 parent_frame_id=2}
3 {file_location_id=2 parent_frame_id=2}
4 {file_location_id=1 parent_frame_id=4}
5 {file_location_id=3 parent_frame_id=2}
6 {file_location_id=4 parent_frame_id=2}

%fused_reduce (param_0: f32[64,32]) -> f32[64] {
  %param_0 = f32[64,32]{1,0} parameter(0)
  %constant.1 = f32[] constant(0)
  ROOT %reduce.1 = f32[64]{0} reduce(%param_0, %constant.1), dimensions={1}, to_apply=%region_add
}

%fused_gelu (param_0.1: f32[64,32]) -> f32[64,32] {
  %param_0.1 = f32[64,32]{1,0} parameter(0)
  %tanh.1 = f32[64,32]{1,0} tanh(%param_0.1)
  ROOT %multiply.1 = f32[64,32]{1,0} multiply(%param_0.1, %tanh.1)
}

%fused_transpose (param_0.2: f32[4,16,2,16]) -> f32[4,2,16,16] {
  %param_0.2 = f32[4,16,2,16]{3,2,1,0} parameter(0)
  %transpose.1 = f32[4,2,16,16]{3,1,2,0} transpose(%param_0.2), dimensions={0,2,1,3}
  ROOT %copy.1 = f32[4,2,16,16]{3,2,1,0} copy(%transpose.1)
}

%fused_gather (param_0.3: f32[65,32], param_1.3: s32[64,1]) -> f32[64,32] {
  %param_0.3 = f32[65,32]{1,0} parameter(0)
  %param_1.3 = s32[64,1]{1,0} parameter(1)
  ROOT %gather.1 = f32[64,32]{1,0} gather(%param_0.3, %param_1.3), offset_dims={1}, collapsed_slice_dims={0}, start_index_map={0}, index_vector_dim=1, slice_sizes={1,32}
}

%fused_adam (param_0.4: f32[64,32], param_1.4: f32[]) -> f32[64,32] {
  %param_0.4 = f32[64,32]{1,0} parameter(0)
  %param_1.4 = f32[] parameter(1)
  %broadcast.1 = f32[64,32]{1,0} broadcast(%param_1.4), dimensions={}
  ROOT %multiply.2 = f32[64,32]{1,0} multiply(%param_0.4, %broadcast.1), metadata={op_name="jit(train_step)/cond/branch_1_fun/mul" stack_frame_id=4}
}

%region_add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add.9 = f32[] add(%a, %b)
}

%branch_update (arg_tuple: (f32[64,32], f32[])) -> (f32[64,32]) {
  %arg_tuple = (f32[64,32]{1,0}, f32[]) parameter(0)
  %gte.0 = f32[64,32]{1,0} get-tuple-element(%arg_tuple), index=0
  %gte.1 = f32[] get-tuple-element(%arg_tuple), index=1
  %multiply_fusion.5 = f32[64,32]{1,0} fusion(%gte.0, %gte.1), kind=kLoop, calls=%fused_adam
  ROOT %tuple.1 = (f32[64,32]{1,0}) tuple(%multiply_fusion.5)
}

ENTRY %main.1 (x: f32[64,32], w: f32[32,32], q: f32[4,2,16,32], ids: s32[64,1], table: f32[65,32]) -> f32[] {
  %x = f32[64,32]{1,0} parameter(0)
  %w = f32[32,32]{1,0} parameter(1)
  %q = f32[4,2,16,32]{3,2,1,0} parameter(2)
  %ids = s32[64,1]{1,0} parameter(3)
  %table = f32[65,32]{1,0} parameter(4)
  %dot_general.27 = f32[64,32]{1,0} dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(train_step)/jvp(Transformer)/block_0/attn/query/dot_general" stack_frame_id=1}
  %dot.1 = f32[4,2,16,16]{3,2,1,0} dot(%q, %q), lhs_batch_dims={0,1}, lhs_contracting_dims={3}, rhs_batch_dims={0,1}, rhs_contracting_dims={3}
  %multiply_reduce_fusion.3 = f32[64]{0} fusion(%x), kind=kLoop, calls=%fused_reduce, metadata={op_name="jit(train_step)/reduce_sum" stack_frame_id=6}
  %multiply_tanh_fusion = f32[64,32]{1,0} fusion(%x), kind=kLoop, calls=%fused_gelu, metadata={op_name="jit(train_step)/jvp(Transformer)/block_0/mlp/tanh" stack_frame_id=1}
  %transpose_copy_fusion.2 = f32[4,2,16,16]{3,2,1,0} fusion(%dot.1), kind=kLoop, calls=%fused_transpose
  %bitcast_gather_fusion = f32[64,32]{1,0} fusion(%table, %ids), kind=kLoop, calls=%fused_gather, metadata={op_name="jit(train_step)/jvp(Transformer)/jit(_take)/gather" stack_frame_id=1}
  %loss_fusion = f32[64,32]{1,0} fusion(%x), kind=kLoop, calls=%fused_gelu, metadata={op_name="jit(train_step)/jvp()/exp" stack_frame_id=5}
  %p = pred[] parameter(5)
  %tuple.2 = (f32[64,32]{1,0}, f32[]) tuple(%x, %x)
  %cond.59 = (f32[64,32]{1,0}) conditional(%p, %tuple.2, %tuple.2), branch_computations={%branch_update, %branch_update}, metadata={op_name="jit(train_step)/cond" stack_frame_id=3}
  %custom-call.1 = f32[64,32]{1,0} custom-call(%x), custom_call_target="Sharding"
  ROOT %r = f32[] constant(0)
}
"""


@pytest.fixture(scope="module")
def module():
    return kc.parse_hlo(HLO)


def test_parse_hlo(module):
    assert module.name == "jit_train_step"
    assert module.instructions["cond.59"].calls == ("branch_update", "branch_update")
    assert module.instructions["multiply_fusion.5"].calls == ("fused_adam",)
    assert module.instructions["tuple.2"].opcode == "tuple"  # a tuple shape is skipped whole
    assert module.roots["fused_adam"] == "multiply.2"
    # parents printed as id + 1: frame 3 (optax's update_fn) was called from frame 1
    assert [f for _, f, _ in module.stack(3)] == ["clip_by_global_norm.<locals>.update_fn",
                                                  "make_train_step.<locals>.train_step"]
    assert len(module.stack(1)) == 1


@pytest.mark.parametrize("name, cls", [
    ("dot_general.27", kct.MATMUL),
    ("dot.1", kct.BATCHED),
    ("multiply_reduce_fusion.3", kct.SOFTMAX),  # a reduce; the metrics' norm, not the optimizer
    ("multiply_tanh_fusion", kct.ELEMENTWISE),
    ("transpose_copy_fusion.2", kct.LAYOUT),
    ("bitcast_gather_fusion", kct.GATHER),
    ("loss_fusion", kct.SOFTMAX),  # elementwise, but inside the softmax cross entropy
    ("multiply_fusion.5", kct.OPTIMIZER),  # no metadata of its own: its root's frame
    ("cond.59", kc.CONTROL),
    ("custom-call.1", kct.OTHER),
    ("not_in_the_module.7", kct.OTHER),
])
def test_classify_instruction(module, name, cls):
    assert kc.classify_instruction(module, name) == cls


def test_softmax_from_the_source_line(tmp_path):
    """jax.nn.softmax's ops carry the caller's frame: the line that calls softmax( decides."""
    src = tmp_path / "attention.py"
    src.write_text("def f(s):\n    return jax.nn.softmax(s, axis=-1)\n")
    assert kc.is_softmax([(str(src), "f", 2)])
    assert not kc.is_softmax([(str(src), "f", 1)]) and not kc.is_softmax([])


def _event(name, ts, dur, tid=1, run="1", op=True):
    args = {"hlo_op": name, "hlo_module": "jit_train_step", "run_id": run} if op else {}
    return {"ph": "X", "pid": 1, "tid": tid, "ts": ts, "dur": dur, "name": name, "args": args}


def test_trace_arithmetic(module):
    """Self time takes nested kernels out of their container; the container is not counted;
    "end: X" callbacks (no hlo_op) are not kernels; busy is the union over threads."""
    trace = {"traceEvents": [
        _event("cond.59", 0, 100),
        _event("multiply_fusion.5", 10, 30),  # nested in cond.59 on thread 1
        _event("end: multiply_fusion.5", 35, 2, op=False),
        _event("dot_general.27", 20, 50, tid=2),  # overlaps thread 1
        _event("dot.1", 200, 10, run="2"),
        _event("other_module_op", 0, 999) | {"args": {"hlo_op": "x", "hlo_module": "jit_other"}},
        {"ph": "M", "pid": 1, "tid": 1, "name": "thread_name", "args": {"name": "python"}},
    ]}
    events = kc.kernel_events(trace, "jit_train_step")
    assert len(events) == 4
    selfs = {e["name"]: s for e, s in kc.self_times(events)}
    assert selfs == {"cond.59": 70, "multiply_fusion.5": 30, "dot_general.27": 50, "dot.1": 10}
    assert kc.union_us([(0, 10), (5, 20), (30, 40)]) == 30
    s = kc.summarise(events, module, steps=2)
    assert s["classes"][kct.OPTIMIZER] == pytest.approx(0.015)  # 30 us over 2 steps, in ms
    assert s["classes"][kct.MATMUL] == pytest.approx(0.025)
    assert s["classes"][kct.BATCHED] == pytest.approx(0.005)
    assert s["kernel_ms"] == pytest.approx(0.045) and s["control_flow_ms"] == pytest.approx(0.035)
    assert s["busy_ms"] == pytest.approx((60 + 10) / 2e3)  # [10, 70] and [200, 210]
    assert s["runs_in_trace"] == 2 and s["unmapped"] == []


@pytest.mark.parametrize("name, kw, cls", [
    ("aten::mm", {}, kct.MATMUL),
    ("aten::addmm", {}, kct.MATMUL),
    ("aten::matmul", {"in_attention": True}, kct.BATCHED),
    ("aten::bmm", {}, kct.BATCHED),
    ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", {}, kct.BATCHED),
    ("aten::_log_softmax", {}, kct.SOFTMAX),
    ("aten::native_layer_norm_backward", {}, kct.SOFTMAX),
    ("aten::gelu_backward", {}, kct.ELEMENTWISE),
    ("aten::add_", {}, kct.ELEMENTWISE),
    ("aten::add_", {"in_optimizer": True}, kct.OPTIMIZER),
    ("aten::_foreach_mul_", {}, kct.OPTIMIZER),
    ("aten::copy_", {}, kct.LAYOUT),
    ("aten::transpose", {}, kct.LAYOUT),
    ("aten::embedding_dense_backward", {}, kct.GATHER),
    ("aten::empty", {}, kct.OTHER),
    ("autograd::engine::evaluate_function: MmBackward0", {}, kct.OTHER),
])
def test_classify_aten(name, kw, cls):
    assert kct.classify_aten(name, **kw) == cls


def test_torch_class_times_by_scope():
    """Ops under the optimizer scope count as optimizer whatever their name; self time per step."""
    def ev(name, us, parent=None):
        return SimpleNamespace(name=name, self_cpu_time_total=us, cpu_parent=parent)

    scope = ev(kct.OPTIMIZER_SCOPE, 100)
    sdpa = ev("aten::scaled_dot_product_attention", 10)
    events = [ev("aten::mm", 4000), scope, ev("aten::mul_", 900, scope), sdpa,
              ev("aten::matmul", 30, sdpa), ev("aten::gelu", 2000)]
    classes, top = kct.class_times(events, steps=2)
    assert classes[kct.MATMUL] == pytest.approx(2.0) and classes[kct.ELEMENTWISE] == pytest.approx(1.0)
    assert classes[kct.OPTIMIZER] == pytest.approx(0.5) and classes[kct.BATCHED] == pytest.approx(0.02)
    assert top[kct.OPTIMIZER][0] == ["aten::mul_", pytest.approx(0.45)]
    assert set(classes) == set(kct.CLASSES)


def test_profile_both_sides_and_table(tmp_path, torch_python):
    """2 profiled steps of each side: a tiny lmjax model (one device of the test's 8) under the
    shape name "baby", and kernel_classes_torch.py profiling nanoGPT's baby step under PyTorch;
    the record, the ratios, and a table per run in its own section."""
    python, _ = torch_python
    tiny = ["--config", "configs/shakespeare_char.py", "--config.model.num_layers=1",
            "--config.model.width=32", "--config.model.num_heads=2", "--config.train.batch_size=4",
            "--config.train.seq_len=16", "--steps", "100"]
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\n## Another section\n\ntext\n")
    rec = kc.main(["--shape", "baby", "--steps", "2", "--warmup", "1", "--torch_python", str(python),
                   "--results_md", str(md), "--out", str(tmp_path / "out")], shapes={"baby": tiny})
    lm, pt = rec["lmjax"], rec["torch"]
    assert lm["runs_in_trace"] == 2 and lm["unmapped"] == [] and lm["hlo_module"] == "jit_train_step"
    assert pt["shape"] == "baby" and pt["steps"] == len(pt["step_ms"]) == 2 and pt["threads"] == 1
    for side in (lm, pt):
        assert list(side["classes"]) == list(kct.CLASSES)
        assert side["kernel_ms"] == pytest.approx(sum(side["classes"].values())) and side["step_ms_mean"] > 0
        assert all(side["classes"][c] > 0 for c in (kct.MATMUL, kct.BATCHED, kct.OPTIMIZER, kct.ELEMENTWISE))
    assert 0 < lm["busy_ms"] <= lm["kernel_ms"] + 1e-9
    assert pt["top"][kct.BATCHED][0][0].startswith("aten::_scaled_dot_product")  # SDPA's fused kernel
    # The optimizer scope classes what runs in clip + AdamW by where it runs, not by its name.
    assert any(kct.classify_aten(name) != kct.OPTIMIZER for name, _ in pt["top"][kct.OPTIMIZER])
    assert rec["config_args"] == tiny[:-2]
    assert rec["ratio"] == {c: pt["classes"][c] / lm["classes"][c] if lm["classes"][c] else None
                            for c in kct.CLASSES}
    text = md.read_text()
    assert text.index("## Another section") < text.index(kc.TITLE)
    assert text.count("| class | lmjax ms/step | PyTorch ms/step | ratio |") == 1
    kc.append_run(md, rec)  # a second run: a second table in the same section
    text = md.read_text()
    assert text.count(kc.TITLE) == 1 and text.count("| matmul (2-D dots) |") == 2
    m_lm, m_pt = lm["classes"][kct.MATMUL], pt["classes"][kct.MATMUL]
    assert (f"| {kct.MATMUL} | {m_lm:,.2f} ({m_lm / lm['step_ms_mean']:.0%}) "
            f"| {m_pt:,.2f} ({m_pt / pt['step_ms_mean']:.0%}) | {m_pt / m_lm:.2f}x |") in text
    assert f"`{rec['command']}`" in text
    assert len(list((tmp_path / "out").glob("*-kernel_classes-baby.json"))) == 1


def test_last_runs_drops_the_first_execution():
    events = [_event("a", 5, 1, run="7"), _event("a", 1, 1, run="9"), _event("b", 9, 1, run="8")]
    assert [e["args"]["run_id"] for e in kc.last_runs(events, 2)] == ["7", "8"]
