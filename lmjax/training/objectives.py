"""What a family learns from a batch of token windows [B, L+1]: (inputs, targets, weights).

- next token (decoder, lstm, gru, rnn, mlp): inputs are the first L tokens, targets the last L.
- masked LM (encoder, BERT's recipe): the first L tokens; each position is chosen with
  probability config.model.mask_rate (0.15); a chosen position's input becomes [MASK] with
  probability 0.8, a uniformly random token with 0.1, and stays itself with 0.1; the loss is on
  the chosen positions only (weights 1 there, 0 elsewhere).

A packed batch (config.data.packing='documents') is {"tokens", "segments"}, both [B, L+1]: the
inputs and targets come from the tokens; a next-token target counts only when it is a real token
of its input's segment (`packing.target_weights`: nothing is predicted across a document
boundary, padding is never a target), a masked-LM position only where segments > 0; the model
attends within the input segments (`input_segments`). A plain array is the unpacked batch.

The masks are drawn inside the jitted step from a key that is a pure function of (seed, step)
(and the micro-batch), with JAX's partitionable threefry: the same masks whatever the device
count, and a resumed run draws the masks an uninterrupted one would. Evaluation uses a fixed key
per validation window, so every evaluation scores the same masked positions, however batched.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from lmjax.config import ModelConfig
from lmjax.data import packing

MASK_REPLACE, MASK_RANDOM = 0.8, 0.1  # of the chosen positions; the rest keep their token
_MASK_STREAM = 0x6D61736B  # folded into the seed's key: mask draws never reuse dropout's keys
_EVAL_STREAM = 0x6576616C

Objective = Callable  # (batch_BL1 (plain or packed), key, weights_BL | None) -> (inputs_BL, targets_BL, weights_BL)


def split(batch_BL1):
    """(tokens [B, L+1], segments [B, L+1] or None) of a packed or plain batch."""
    if isinstance(batch_BL1, dict):
        return batch_BL1["tokens"], batch_BL1["segments"]
    return batch_BL1, None


def input_segments(batch_BL1):
    """The segment ids of the model's inputs [B, L] (None for a plain batch)."""
    segments_BL1 = split(batch_BL1)[1]
    return None if segments_BL1 is None else segments_BL1[:, :-1]


def next_token(batch_BL1, key=None, weights_BL=None):
    tokens_BL1, segments_BL1 = split(batch_BL1)
    inputs_BL, targets_BL = tokens_BL1[:, :-1], tokens_BL1[:, 1:]
    if segments_BL1 is not None:
        within_BL = packing.target_weights(segments_BL1)
        return inputs_BL, targets_BL, within_BL if weights_BL is None else within_BL * weights_BL
    return inputs_BL, targets_BL, jnp.ones(targets_BL.shape, jnp.float32) if weights_BL is None else weights_BL


def masked_lm(cfg: ModelConfig) -> Objective:
    """BERT's masked-LM objective for cfg (whose last vocabulary id is [MASK])."""
    mask_id = cfg.vocab_size - 1

    def objective(batch_BL1, key, weights_BL=None):
        tokens_BL1, segments_BL1 = split(batch_BL1)
        tokens_BL = tokens_BL1[:, :-1]
        choose, how, rand = jax.random.split(key, 3)
        chosen_BL = jax.random.uniform(choose, tokens_BL.shape) < cfg.mask_rate
        u_BL = jax.random.uniform(how, tokens_BL.shape)
        random_BL = jax.random.randint(rand, tokens_BL.shape, 0, mask_id, tokens_BL.dtype)
        replaced_BL = jnp.where(u_BL < MASK_REPLACE, mask_id,
                                jnp.where(u_BL < MASK_REPLACE + MASK_RANDOM, random_BL, tokens_BL))
        inputs_BL = jnp.where(chosen_BL, replaced_BL, tokens_BL)
        weights = chosen_BL.astype(jnp.float32)
        if segments_BL1 is not None:  # padding is never scored
            weights = weights * (segments_BL1[:, :-1] > 0)
        if weights_BL is not None:  # evaluation: padding positions are never scored
            weights = weights * weights_BL
        return inputs_BL, tokens_BL, weights

    return objective


def for_model(cfg: ModelConfig) -> Objective:
    return masked_lm(cfg) if cfg.family == "encoder" else next_token


def train_key(seed: int, step):
    """The objective's key for a training step (fold the micro-batch index in for accumulation)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _MASK_STREAM), step)


def eval_key(seed: int, window):
    """The objective's fixed key for validation window `window` (see training/evaluation.py)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _EVAL_STREAM), window)
