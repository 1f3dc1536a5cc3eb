"""A classification head on any neural family's backbone, for `lmjax finetune`.

params = {'backbone': <the language model's params, as pretrained>, 'head': {'kernel', 'bias'}}:
the backbone's final (normed) hidden states [B, L, D] are pooled to [B, D] and projected to one
logit per label. Pooling: 'first' (position 0: the encoder sees the whole text from there),
'last' (the last real token: in a causal model the only one that has read the whole text) or
'mean' (over the real tokens). Examples are padded at the end with id 0; causal families never
see the padding from a real position, the encoder does (it has no key-padding mask), so
pooled features of a padded example depend a little on its padding.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from lmjax.config import ModelConfig
from lmjax.models.families import MODULES


def resolve_pooling(pooling: str, family: str) -> str:
    """'auto' -> 'first' for the encoder, 'last' for causal families."""
    if pooling != "auto":
        return pooling
    return "first" if family == "encoder" else "last"


class Classifier(nn.Module):
    cfg: ModelConfig
    num_labels: int
    pooling: str  # first | mean | last (resolved)

    @nn.compact
    def __call__(self, tokens_BL, lengths_B, *, train: bool = False):
        """float32 logits [B, num_labels]."""
        backbone = MODULES[self.cfg.family][1](self.cfg, name="backbone")
        h_BLD = backbone(tokens_BL, train=train, logits=False).astype(jnp.float32)
        B, L = tokens_BL.shape
        if self.pooling == "first":
            pooled_BD = h_BLD[:, 0]
        elif self.pooling == "last":
            pooled_BD = h_BLD[jnp.arange(B), lengths_B - 1]
        else:
            real_BL = (jnp.arange(L)[None, :] < lengths_B[:, None]).astype(jnp.float32)
            pooled_BD = (h_BLD * real_BL[..., None]).sum(1) / lengths_B[:, None].astype(jnp.float32)
        return nn.Dense(self.num_labels, kernel_init=nn.initializers.normal(0.02), name="head")(pooled_BD)
