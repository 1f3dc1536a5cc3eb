"""AdamW with warmup and decay, global-norm clipping, and weight decay on matrices only."""

from __future__ import annotations

import jax
import optax


def lr_schedule(train_cfg) -> optax.Schedule:
    peak, steps = train_cfg.lr, train_cfg.steps
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


def make_optimizer(train_cfg) -> optax.GradientTransformation:
    """AdamW behind `apply_if_finite`: a step with NaN/Inf gradients leaves params and moments
    untouched, so a non-finite state never exists to be checkpointed. The loop decides (per
    config.train.nonfinite) whether to halt or carry on."""
    parts = []
    if train_cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(train_cfg.grad_clip))
    parts.append(
        optax.adamw(
            lr_schedule(train_cfg),
            b1=train_cfg.b1,
            b2=train_cfg.b2,
            weight_decay=train_cfg.weight_decay,
            mask=decay_mask,
        )
    )
    # The loop halts long before this count; optax would apply NaN updates past it.
    return optax.apply_if_finite(optax.chain(*parts), max_consecutive_errors=2**30)
