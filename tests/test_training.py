"""Training on a mesh: sharded = single-device, checkpoints move across meshes, exact resume.

Tolerance: the 8-device run reduces gradients in another order than the 1-device run, so
losses differ by float32 rounding, which AdamW's normalisation amplifies over steps. Measured
here: at most 2.6e-7 relative over 8 steps. 1e-5 leaves ~40x headroom for other CPUs and XLA
versions while a real bug (a wrong shard, a dropped micro-batch) moves the loss by >1e-3.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.config import base_config
from lmjax.training.loop import train

SHARDED_RTOL = 1e-5


def tiny_config(**train_overrides):
    c = base_config()
    c.data.corpus = "tinyshakespeare"
    c.data.val_fraction = 0.02  # 22 KB: the final evaluation scores all of it
    c.data.tokenizer = "byte"
    c.model.num_layers, c.model.num_heads, c.model.width = 2, 4, 64
    c.model.dropout = 0.1  # exercises the dropout rng on resume
    c.train.update(steps=8, batch_size=16, seq_len=32, lr=3e-3, warmup_steps=2, log_every=1,
                   eval_every=1000, eval_batches=2, checkpoint_every=1000)
    c.train.update(train_overrides)
    return c


def losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r["loss"] for r in rows if "loss" in r}
    return np.array([by_step[s] for s in sorted(by_step)])


def mesh(data, fsdp, tensor):
    return {"data": data, "fsdp": fsdp, "tensor": tensor}


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one")
    c = tiny_config()
    c.mesh.update(mesh(1, 1, 1))
    train(c, workdir, progress=False, devices=jax.devices()[:1])
    return workdir


def test_sharded_matches_single_device(one_device_run, tmp_path):
    c = tiny_config()
    c.mesh.update(mesh(2, 2, 2))
    final = train(c, tmp_path, progress=False)
    single, sharded = losses(one_device_run), losses(tmp_path)
    assert len(single) == len(sharded) == 8
    assert single[-1] < single[0] - 0.5  # it learns
    np.testing.assert_allclose(sharded, single, rtol=SHARDED_RTOL)
    assert final["step"] == 8
    assert 0 < final["val_bits_per_byte"] < 8


def test_resume_is_exact_on_same_devices(one_device_run, tmp_path):
    c = tiny_config()
    c.mesh.update(mesh(1, 1, 1))
    train(c, tmp_path, progress=False, devices=jax.devices()[:1], stop_at=3)
    assert len(losses(tmp_path)) == 3
    train(c, tmp_path, progress=False, devices=jax.devices()[:1])
    # Bitwise: same devices, same batches (a function of step), same dropout rng (of step).
    np.testing.assert_array_equal(losses(tmp_path), losses(one_device_run))


def test_checkpoint_from_8_devices_resumes_on_1(one_device_run, tmp_path):
    c8 = tiny_config()
    c8.mesh.update(mesh(2, 2, 2))
    train(c8, tmp_path, progress=False, stop_at=4)
    c1 = tiny_config()
    c1.mesh.update(mesh(1, 1, 1))
    train(c1, tmp_path, progress=False, devices=jax.devices()[:1])
    np.testing.assert_allclose(losses(tmp_path), losses(one_device_run), rtol=SHARDED_RTOL)


def test_grad_accumulation_matches_full_batch(tmp_path):
    # Without dropout, 4 micro-batches of 4 give the gradient of one batch of 16.
    full, accum = tiny_config(steps=4), tiny_config(steps=4, grad_accum=4)
    for c in (full, accum):
        c.model.dropout = 0.0
        c.mesh.update(mesh(1, 1, 1))
    train(full, tmp_path / "full", progress=False, devices=jax.devices()[:1])
    train(accum, tmp_path / "accum", progress=False, devices=jax.devices()[:1])
    np.testing.assert_allclose(losses(tmp_path / "accum"), losses(tmp_path / "full"), rtol=1e-5)


def test_chunked_loss_matches_whole_logits_sharded(one_device_run, tmp_path):
    # config.train.loss_chunk: logits 8 positions at a time, on a (2, 2, 2) mesh, with dropout.
    c = tiny_config(loss_chunk=8)
    c.mesh.update(mesh(2, 2, 2))
    train(c, tmp_path, progress=False)
    np.testing.assert_allclose(losses(tmp_path), losses(one_device_run), rtol=SHARDED_RTOL)


def test_chunked_loss_with_bfloat16_and_accumulation(tmp_path):
    # The GPU path: bfloat16 compute, micro-batches. Measured: losses within 2e-5 relative.
    for chunk in (0, 8):
        c = tiny_config(steps=4, grad_accum=2, loss_chunk=chunk)
        c.model.dtype = "bfloat16"
        c.mesh.update(mesh(1, 1, 1))
        train(c, tmp_path / str(chunk), progress=False, devices=jax.devices()[:1])
    np.testing.assert_allclose(losses(tmp_path / "8"), losses(tmp_path / "0"), rtol=2e-4)


@pytest.mark.parametrize("tied", [True, False])
def test_chunked_cross_entropy_gradients(tied):
    import jax.numpy as jnp

    from lmjax.config import resolve
    from lmjax.models import Transformer, unboxed, unembedding_VD
    from lmjax.training.steps import chunked_cross_entropy, cross_entropy

    c = base_config()
    c.model.num_layers, c.model.num_heads, c.model.width, c.model.tie_embeddings = 2, 2, 32, tied
    model = Transformer(resolve(c).model.replace(vocab_size=300, max_len=64))
    rng = np.random.default_rng(0)
    x_BL, t_BL = (jnp.asarray(rng.integers(0, 300, (4, 64)), jnp.int32) for _ in range(2))
    params = unboxed(model.init(jax.random.key(0), x_BL)["params"])

    def whole(p):
        return cross_entropy(model.apply({"params": p}, x_BL), t_BL)[0]

    def chunked(p):
        hidden_BLD = model.apply({"params": p}, x_BL, logits=False)
        return chunked_cross_entropy(hidden_BLD, unembedding_VD(model.cfg, p), t_BL, 16)[0]

    (loss, grads), (loss_c, grads_c) = jax.value_and_grad(whole)(params), jax.value_and_grad(chunked)(params)
    np.testing.assert_allclose(loss_c, loss, rtol=1e-6)
    for g, g_c in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_c)):
        np.testing.assert_allclose(g_c, g, rtol=1e-4, atol=1e-5)


def test_chunked_loss_never_holds_the_whole_logits():
    # XLA's buffer plan for the step: [8, 128, 4096] float32 logits are 16 MiB, and the whole-logits
    # step holds them, their softmax and their gradient at once (measured 49.3 vs 23.4 MiB).
    from benchmarks.harness import abstract_batch
    from lmjax.config import resolve
    from lmjax.training import sharding
    from lmjax.training.steps import make_setup, mesh_context

    temp = {}
    for chunk in (0, 16):
        c = base_config()
        c.model.num_layers, c.model.num_heads, c.model.width = 2, 2, 64
        c.train.seq_len, c.train.batch_size, c.train.loss_chunk = 128, 8, chunk
        c = resolve(c)
        m = sharding.make_mesh(c.mesh, jax.devices()[:1])
        setup = make_setup(c, vocab_size=4096, mesh=m)
        with mesh_context(m):
            compiled = setup.jit_train_step.lower(setup.abstract_state, abstract_batch(setup)).compile()
        temp[chunk] = compiled.memory_analysis().temp_size_in_bytes
    assert temp[0] - temp[16] > 16 * 2**20, temp


def test_workdir_check_treats_keys_added_later_as_defaults(tmp_path):
    from lmjax.errors import ConfigError
    from lmjax.training.resume import check_workdir
    from lmjax.workdir import Workdir

    cfg = base_config().to_dict()
    saved = json.loads(json.dumps(cfg))
    del saved["model"]["linear_chunk"]  # a run saved before this key existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    check_workdir(Workdir(tmp_path), cfg, force=False)
    cfg["model"]["width"] = 512
    with pytest.raises(ConfigError, match="config.model.width: 256 -> 512"):
        check_workdir(Workdir(tmp_path), cfg, force=False)


def test_muon_orthogonalises_block_matrices_only_and_shards_like_one_device(tmp_path):
    """config.train.optimizer='muon': Muon for the blocks' kernels ([in, out], or stacked with a
    layer batch axis under scan_layers), AdamW for embeddings, head, norms and biases; it learns,
    and a sharded run follows the 1-device one."""
    from lmjax.models import ModelConfig, init_params
    from lmjax.training.optimizer import muon_dimensions

    for scan in (False, True):
        cfg = ModelConfig(vocab_size=50, max_len=16, num_layers=2, num_heads=2, width=16,
                          tie_embeddings=False, bias=True, scan_layers=scan)
        dims = muon_dimensions(jax.eval_shape(lambda c=cfg: init_params(c, jax.random.key(0))))
        flat = {jax.tree_util.keystr(p): d for p, d in jax.tree_util.tree_flatten_with_path(
            dims, is_leaf=lambda x: x is None or hasattr(x, "reduction_axis"))[0]}
        muon = {k for k, d in flat.items() if d is not None}
        block = "['blocks']" if scan else "['block_0']"
        assert f"{block}['attn']['query']['kernel']" in muon and f"{block}['mlp']['down']['kernel']" in muon
        assert not any(s in k for k in muon for s in ("embedding", "unembed", "norm", "bias"))
        assert len(muon) == (6 if scan else 12)  # q, k, v, out, up, down per block
        if scan:
            assert flat["['blocks']['mlp']['up']['kernel']"] == (1, 2)  # axis 0: layers, a batch axis
    single, sharded = tmp_path / "one", tmp_path / "eight"
    c = tiny_config(optimizer="muon", muon_lr=0.02)
    c.mesh.update(mesh(1, 1, 1))
    train(c, single, progress=False, devices=jax.devices()[:1])
    c.mesh.update(mesh(2, 2, 2))
    train(c, sharded, progress=False)
    assert losses(single)[-1] < losses(single)[0] - 0.5
    np.testing.assert_allclose(losses(sharded), losses(single), rtol=1e-4)


def test_muon_ns_steps_sets_the_orthogonalisation():
    """config.train.muon_ns_steps reaches optax's Newton-Schulz loop: more steps leave the update's
    singular values nearer one another (the point of orthogonalising)."""
    from lmjax.config import resolve
    from lmjax.training.optimizer import make_optimizer

    g = {"layer": {"kernel": jax.random.normal(jax.random.key(0), (32, 16)) * jnp.linspace(0.1, 3, 16)}}
    spreads = []
    for ns in (1, 5):
        tc = resolve(tiny_config(optimizer="muon", muon_ns_steps=ns, warmup_steps=0, grad_clip=0.0)).train
        opt = make_optimizer(tc)
        update, _ = opt.update(g, opt.init(g), g)
        s = np.linalg.svd(np.asarray(update["layer"]["kernel"]), compute_uv=False)
        spreads.append(s.max() / s.min())
    assert spreads[1] < spreads[0] / 2
