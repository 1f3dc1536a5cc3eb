"""The pure functions that jit compiles: state init, train step, eval step."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from lmjax.config import resolve
from lmjax.models import ModelConfig, build, model_vocab_size, unembedding_VD
from lmjax.training import objectives
from lmjax.training import sharding
from lmjax.training.optimizer import lr_schedule, make_optimizer


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def cross_entropy(logits_BLV, targets_BL, weights_BL=None):
    """Sum of token losses and of weights (float32), so batches combine exactly."""
    losses_BL = optax.softmax_cross_entropy_with_integer_labels(
        logits_BLV.astype(jnp.float32), targets_BL
    )
    if weights_BL is None:
        weights_BL = jnp.ones_like(losses_BL)
    return jnp.sum(losses_BL * weights_BL), jnp.sum(weights_BL)


def chunked_cross_entropy(x_BLD, unembed_VD, targets_BL, chunk: int, weights_BL=None):
    """cross_entropy of the logits x_BLD @ unembed_VD.T, `chunk` positions at a time: each chunk's
    [B, chunk, V] logits live only inside its scan step and are recomputed in the backward, so
    the whole [B, L, V] float32 logits (3.3 GB at GPT-2 small's 16 x 1024 x 50304) never exist.
    weights_BL None: every target counts (weights of one)."""
    B, L, D = x_BLD.shape
    to_chunks = lambda a: a.reshape(B, L // chunk, chunk, *a.shape[2:]).swapaxes(0, 1)  # noqa: E731
    xs = (to_chunks(x_BLD), to_chunks(targets_BL))
    w_VD = unembed_VD.astype(x_BLD.dtype)  # the compute dtype, as the model's own head

    def chunk_logits(x_BCD):
        return jnp.einsum("bcd,vd->bcv", x_BCD, w_VD, preferred_element_type=jnp.float32)

    if weights_BL is not None:
        @jax.checkpoint
        def add_weighted(totals, xs):
            x_BCD, t_BC, w_BC = xs
            return jax.tree.map(jnp.add, totals, cross_entropy(chunk_logits(x_BCD), t_BC, w_BC)), None

        zero = jnp.zeros((), jnp.float32)
        return jax.lax.scan(add_weighted, (zero, zero), (*xs, to_chunks(weights_BL)))[0]

    @jax.checkpoint
    def add_chunk(total, xs):
        x_BCD, t_BC = xs
        return total + cross_entropy(chunk_logits(x_BCD), t_BC)[0], None

    total, _ = jax.lax.scan(add_chunk, jnp.zeros((), jnp.float32), xs)
    return total, jnp.float32(B * L)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules=sharding.LOGICAL_RULES):
    """Tracing under this context resolves the model's logical sharding constraints."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


@dataclasses.dataclass
class Setup:
    """Everything derived from (config, vocabulary, mesh) that the loop and loaders share.

    With config.train.replicas = K > 1 every leaf of the state, every batch ([K, B, L+1]) and every
    metric has a leading replica axis: replica k is the run of seed `train.seed + k`."""

    model_cfg: ModelConfig
    model: nn.Module  # the family's model (lmjax.models.build)
    optimizer: optax.GradientTransformation
    mesh: Mesh
    abstract_state: TrainState  # ShapeDtypeStructs carrying this mesh's shardings
    state_shardings: TrainState
    init_state: Callable  # seed -> TrainState, placed on the mesh (replicas: seeds seed..seed+K-1)
    train_step: Callable  # (state, batch) -> (state, metrics), jitted, state donated
    eval_step: Callable  # (params, batch, weights, window indices) -> sums (see make_eval_step), jitted
    # The same train step as the bare `jax.jit` object, for `.lower()` / ahead-of-time compiles;
    # trace and lower it inside `self.context()`.
    jit_train_step: Any = None
    replicas: int = 1
    rules: tuple = sharding.LOGICAL_RULES  # the logical-axis rules the steps were traced under
    batch_shape: tuple = ()  # of a global train batch's tokens: [B, L+1], replicas: [K, B, L+1]
    batch_sharding: Any = None  # of a train batch
    eval_batch_sharding: Any = None  # of a validation batch, which every replica scores

    def context(self):
        return mesh_context(self.mesh, self.rules)

    def put_batch(self, local_batch):
        """This process's rows of a train batch (replicas: stacked [K, B, L+1]; packed documents:
        {"tokens", "segments"} of that shape) on the mesh."""
        return sharding.global_batch(local_batch, self.mesh, self.batch_sharding)


def make_setup(config, *, vocab_size: int, mesh: Mesh) -> Setup:
    """`config`: a resolved Config (a ConfigDict is resolved first)."""
    config = resolve(config)
    model_cfg = config.model.replace(vocab_size=model_vocab_size(config.model, vocab_size))
    model = build(model_cfg)
    optimizer = make_optimizer(config.train)
    dummy = jnp.zeros((1, min(config.train.seq_len, 8)), jnp.int32)
    K, seed = config.train.replicas, config.train.seed
    replica = sharding.replica_axis(mesh, K)
    rules = sharding.logical_rules(replica)

    @jax.jit  # traced once: eval_shape below and init_state's trace share it (~0.1 s a start)
    def init_boxed(seed):
        params = model.init(jax.random.key(seed), dummy)["params"]  # nn.LogicallyPartitioned leaves
        return TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=optimizer.init(params))

    with mesh_context(mesh, rules):
        boxed = jax.eval_shape(init_boxed, seed)
    # Outside the rules context: there, unboxing would add sharding constraints.
    shardings = sharding.tree_shardings(mesh, boxed)
    abstract = nn.unbox(boxed)
    step_one = make_train_step(model, optimizer, config.train)
    eval_one = make_eval_step(model)
    # K > 1: one program for all replicas, vmapped over a leading axis that is split over
    # `replica` when the mesh has devices to spare (spmd_axis_name adds it to the model's own
    # sharding constraints). Replica k is seed + k.
    vmap = functools.partial(jax.vmap, spmd_axis_name=replica)
    offsets = jnp.arange(K, dtype=jnp.int32)
    if K > 1:
        shardings = sharding.with_replicas(shardings, replica)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct((K, *x.shape), x.dtype), abstract)

    def init_state(seed):
        init_one = lambda s: nn.unbox(init_boxed(s))  # noqa: E731
        return init_one(seed) if K == 1 else vmap(init_one)(seed + offsets)

    def train_step(state, batch):
        return step_one(state, batch, seed) if K == 1 else vmap(step_one)(state, batch, seed + offsets)

    def eval_step(params, batch, weights, windows):
        if K == 1:
            return eval_one(params, batch, weights, windows, seed)
        return vmap(eval_one, in_axes=(0, None, None, None, 0))(params, batch, weights, windows, seed + offsets)

    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    batch = sharding.batch_sharding(mesh, replica, K)
    eval_batch = sharding.batch_sharding(mesh, replica)
    init_state = jax.jit(init_state, out_shardings=shardings)
    train_step = jax.jit(train_step, in_shardings=(shardings, batch),
                         out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
    eval_step = jax.jit(eval_step, in_shardings=(shardings.params, eval_batch, eval_batch, eval_batch),
                        out_shardings=sharding.replicated(mesh))

    def under_mesh(fn):
        def call(*args):
            with mesh_context(mesh, rules):
                return fn(*args)
        return call

    return Setup(model_cfg, model, optimizer, mesh, abstract, shardings, under_mesh(init_state),
                 under_mesh(train_step), under_mesh(eval_step), train_step, replicas=K, rules=rules,
                 batch_shape=(*(K,) * (K > 1), config.train.batch_size, config.train.seq_len + 1),
                 batch_sharding=batch, eval_batch_sharding=eval_batch)


def apply_model(model: nn.Module, params, inputs_BL, batch_BL1, **kw):
    """The model on inputs_BL, attending within the batch's input segments if it is packed (only
    the Transformer families take segments)."""
    segments_BL = objectives.input_segments(batch_BL1)
    if segments_BL is not None:
        kw["segments_BL"] = segments_BL
    return model.apply({"params": params}, inputs_BL, **kw)


def make_train_step(model: nn.Module, optimizer, train_cfg):
    """Returns the pure `train_step(state, batch, seed) -> (state, metrics)`.

    `batch` is int32 [B, L+1], or packed documents {"tokens", "segments"} of that shape
    (objectives.py). Dropout randomness is a function of (seed, step) alone, so a resumed run
    draws the same masks as an uninterrupted one. `seed` may be traced (one per replica under
    vmap). A plain batch's loss is the mean of its micro-batches' mean losses (their target counts
    are equal); a packed batch's is its summed target losses over its summed target weights,
    which differ between micro-batches: the gradients of the sums are accumulated, then divided.
    """
    accum = train_cfg.grad_accum
    schedule = lr_schedule(train_cfg)
    objective = objectives.for_model(model.cfg)

    def loss_sums(params, batch_BL1, rng, objective_key):
        """(summed target losses, summed target weights) of a batch."""
        inputs_BL, targets_BL, weights_BL = objective(batch_BL1, objective_key)
        out = apply_model(model, params, inputs_BL, batch_BL1, train=True, rngs={"dropout": rng},
                          logits=not train_cfg.loss_chunk)
        if train_cfg.loss_chunk:  # a plain batch's weights are all ones
            packed_weights = weights_BL if isinstance(batch_BL1, dict) else None
            return chunked_cross_entropy(out, unembedding_VD(model.cfg, params), targets_BL,
                                         train_cfg.loss_chunk, packed_weights)
        return cross_entropy(out, targets_BL, weights_BL)

    def loss_fn(params, batch_BL1, rng, objective_key):
        loss_sum, count = loss_sums(params, batch_BL1, rng, objective_key)
        return loss_sum / jnp.maximum(count, 1.0)

    mean_grad = jax.value_and_grad(loss_fn)  # plain batches: (mean loss, its gradients)
    sum_grad = jax.value_and_grad(loss_sums, has_aux=True)  # packed: ((loss sum, count), gradients)

    def summed(grad_fn, value_zeros, params, batch_BL1, rng, objective_key):
        """grad_fn's (value, gradients) summed over the micro-batches (the batch when accum == 1)."""
        if accum == 1:
            return grad_fn(params, batch_BL1, rng, objective_key)
        # Micro-batch i takes rows i, i+accum, ...: each device keeps its own rows.
        micro_ABL1 = jax.tree.map(lambda x: x.reshape(x.shape[0] // accum, accum, -1).swapaxes(0, 1), batch_BL1)

        def accumulate(carry, xs):
            i, micro_BL1 = xs
            out = grad_fn(params, micro_BL1, jax.random.fold_in(rng, i), jax.random.fold_in(objective_key, i))
            return jax.tree.map(jnp.add, carry, out), None

        zeros = (value_zeros, jax.tree.map(jnp.zeros_like, params))
        return jax.lax.scan(accumulate, zeros, (jnp.arange(accum), micro_ABL1))[0]

    def loss_and_grads(params, batch_BL1, rng, objective_key):
        zero = jnp.zeros((), jnp.float32)
        if isinstance(batch_BL1, dict):
            (loss_sum, count), grads = summed(sum_grad, (zero, zero), params, batch_BL1, rng, objective_key)
            return jax.tree.map(lambda x: x / jnp.maximum(count, 1.0), (loss_sum, grads))
        loss, grads = summed(mean_grad, zero, params, batch_BL1, rng, objective_key)
        return (loss, grads) if accum == 1 else jax.tree.map(lambda x: x / accum, (loss, grads))

    def train_step(state: TrainState, batch_BL1, seed):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        objective_key = objectives.train_key(seed, state.step)
        loss, grads = loss_and_grads(state.params, batch_BL1, rng, objective_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "lr": schedule(state.step),
            "finite": opt_state.last_finite & jnp.isfinite(loss),
            "skipped_steps": opt_state.total_notfinite,
        }
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(model: nn.Module):
    """`eval_step(params, batch, weights, windows, seed) -> (loss sums [B], weight sums [B], correct
    sums [B], loss sums [L], weight sums [L])`: the objective's loss and its top-1 hits per row
    (window) and per position in the window (summed over rows); the encoder's masks are fixed per
    (seed, window index), so they do not depend on how windows are batched. `batch`: int32
    [B, L+1], or packed {"tokens", "segments"} (the model then attends within segments)."""
    objective = objectives.for_model(model.cfg)

    def row_objective(row_L1, weights_L, window, seed):
        one_row = jax.tree.map(lambda x: x[None], row_L1)  # a packed row too
        inputs, targets, weights = objective(one_row, objectives.eval_key(seed, window), weights_L[None])
        return inputs[0], targets[0], weights[0]

    def eval_step(params, batch_BL1, weights_BL, windows_B, seed):
        inputs_BL, targets_BL, weights_BL = jax.vmap(row_objective, in_axes=(0, 0, 0, None))(
            batch_BL1, weights_BL, windows_B, seed)
        logits_BLV = apply_model(model, params, inputs_BL, batch_BL1)
        losses_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, targets_BL) * weights_BL
        correct_BL = (jnp.argmax(logits_BLV, axis=-1) == targets_BL) * weights_BL
        return (jnp.sum(losses_BL, axis=1), jnp.sum(weights_BL, axis=1), jnp.sum(correct_BL, axis=1),
                jnp.sum(losses_BL, axis=0), jnp.sum(weights_BL, axis=0))

    return eval_step
