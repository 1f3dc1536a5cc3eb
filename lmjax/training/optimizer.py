"""AdamW (or Muon for the blocks' matrices) with warmup and decay, global-norm clipping, and weight
decay on matrices only."""

from __future__ import annotations

import jax
import optax
from optax.contrib import MuonDimensionNumbers


def lr_schedule(train_cfg, peak: float | None = None) -> optax.Schedule:
    """Warmup to `peak` (default config.train.lr), then the configured decay."""
    peak = train_cfg.lr if peak is None else peak
    steps = train_cfg.steps
    warmup = min(train_cfg.warmup_steps, steps)
    end = peak * train_cfg.min_lr_ratio
    decay_steps = max(steps - warmup, 1)
    decay = {
        "cosine": optax.cosine_decay_schedule(peak, decay_steps, alpha=train_cfg.min_lr_ratio),
        "linear": optax.linear_schedule(peak, end, decay_steps),
        "constant": optax.constant_schedule(peak),
    }[train_cfg.schedule]
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


NOT_DECAYED = ("scale", "bias")


def decay_mask(params):
    # Norm scales and biases are not decayed: shrinking them towards 0 only fights the norm.
    # By name, not by ndim: with scan_layers a norm scale is [num_layers, D].
    return jax.tree_util.tree_map_with_path(
        lambda path, p: getattr(path[-1], "key", None) not in NOT_DECAYED, params)


def muon_dimensions(params):
    """Which leaves Muon orthogonalises: the weight matrices ('kernel') of the model's layers, as
    [in, out] (stacked [layers, in, out] under nn.scan: the layer axis is a batch axis). None
    (AdamW): embeddings, the output head, norms, biases. Muon is for hidden layers' matrices."""
    def dims(path, p):
        # Dict keys only: the optimizer is also initialised on boxed (logically partitioned) params.
        names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        if names[-1] != "kernel" or "unembed" in names or p.ndim not in (2, 3):
            return None
        return MuonDimensionNumbers(reduction_axis=p.ndim - 2, output_axis=p.ndim - 1)

    return jax.tree_util.tree_map_with_path(dims, params)


def make_optimizer(train_cfg) -> optax.GradientTransformation:
    """AdamW (or Muon + AdamW, config.train.optimizer) behind `apply_if_finite`: a step with
    NaN/Inf gradients leaves params and moments untouched, so a non-finite state never exists to
    be checkpointed. The loop decides (per config.train.nonfinite) whether to halt or carry on."""
    parts = []
    if train_cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(train_cfg.grad_clip))
    if train_cfg.optimizer == "muon":
        parts.append(optax.contrib.muon(
            lr_schedule(train_cfg, train_cfg.muon_lr), weight_decay=train_cfg.weight_decay,
            adam_learning_rate=lr_schedule(train_cfg), adam_b1=train_cfg.b1, adam_b2=train_cfg.b2,
            ns_steps=train_cfg.muon_ns_steps, muon_weight_dimension_numbers=muon_dimensions))
    else:
        parts.append(optax.adamw(lr_schedule(train_cfg), b1=train_cfg.b1, b2=train_cfg.b2,
                                 weight_decay=train_cfg.weight_decay, mask=decay_mask))
    # The loop halts long before this count; optax would apply NaN updates past it.
    return optax.apply_if_finite(optax.chain(*parts), max_consecutive_errors=2**30)
