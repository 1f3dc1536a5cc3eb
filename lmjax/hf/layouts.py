"""The two public decoder layouts lmjax converts, GPT-2 and LLaMA: which lmjax configs each can
express, their config.json, and their parameter names against lmjax's.

    GPT-2 (GPT2LMHeadModel): positions='learned', norm='layernorm', mlp='gelu', bias=True, mha
    LLaMA (LlamaForCausalLM): positions='rope', norm='rmsnorm', mlp='swiglu', any kv heads,
                              bias=False (or True: LLaMA's attention_bias and mlp_bias)

Parameters are numpy arrays throughout. lmjax's Dense kernels are [in, out]; so are GPT-2's
Conv1D weights, while LLaMA's nn.Linear weights are [out, in] (transposed). GPT-2 fuses query,
key and value into one c_attn [D, 3D]. Nothing here imports transformers or torch.
"""

from __future__ import annotations

import numpy as np

from lmjax.config import ModelConfig
from lmjax.errors import ConfigError, LmjaxError

LAYOUTS = ("gpt2", "llama")


class ConversionError(LmjaxError):
    """A Hugging Face directory lmjax cannot read, or parameters that do not fit the config."""


def layout_for(m: ModelConfig) -> str:
    """'gpt2' or 'llama' for a config one of them expresses exactly, else a ConfigError naming the
    key that neither has."""
    def refuse(key: str, why: str):
        raise ConfigError(f"config.model.{key}={getattr(m, key)!r} cannot be exported: {why}")

    if m.family != "decoder":
        refuse("family", "GPT-2 and LLaMA are decoders (causal LMs)")
    if m.attention == "linear":
        refuse("attention", "GPT-2 and LLaMA have softmax attention only")
    if m.window:
        refuse("window", "GPT2LMHeadModel and LlamaForCausalLM have no sliding window")
    if m.positions not in ("learned", "rope"):
        refuse("positions", "GPT-2 has learned positions and LLaMA rotary ones ('learned' or 'rope')")
    if m.positions == "learned":  # GPT-2
        if m.norm != "layernorm":
            refuse("norm", "learned positions are the GPT-2 layout, which has LayerNorm")
        if m.mlp != "gelu":
            refuse("mlp", "learned positions are the GPT-2 layout, whose MLP is 'gelu'")
        if not m.bias:
            refuse("bias", "learned positions are the GPT-2 layout, which has biases in every projection")
        if m.kv_heads != m.num_heads:
            refuse("attention", "learned positions are the GPT-2 layout, which has no grouped-query "
                   "attention (use positions='rope' for the LLaMA layout)")
        return "gpt2"
    if m.norm != "rmsnorm":
        refuse("norm", "rotary positions are the LLaMA layout, which has RMSNorm")
    if m.mlp != "swiglu":
        refuse("mlp", "rotary positions are the LLaMA layout, whose MLP is 'swiglu'")
    return "llama"


def hf_config(m: ModelConfig, layout: str) -> dict:
    """config.json for `m` (a config `layout_for` accepted), float32, no special tokens."""
    common = {"vocab_size": m.vocab_size, "tie_word_embeddings": m.tie_embeddings,
              "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
              "torch_dtype": "float32", "use_cache": True}
    if layout == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", **common,
                "n_positions": m.max_len, "n_embd": m.width, "n_layer": m.num_layers,
                "n_head": m.num_heads, "n_inner": m.mlp_hidden, "activation_function": "gelu_new",
                "layer_norm_epsilon": m.norm_eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
                "attn_pdrop": 0.0, "scale_attn_weights": True}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **common,
            "hidden_size": m.width, "intermediate_size": m.mlp_hidden,
            "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_heads,
            "num_key_value_heads": m.kv_heads, "head_dim": m.head_dim, "hidden_act": "silu",
            "max_position_embeddings": m.max_len, "rms_norm_eps": m.norm_eps,
            # transformers < 5 reads rope_theta, 5 reads rope_parameters
            "rope_theta": m.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
            "attention_bias": m.bias, "mlp_bias": m.bias, "attention_dropout": 0.0}


def model_keys(hf: dict) -> tuple[str, dict, int]:
    """(layout, config.model keys, context length) of a Hugging Face config.json's dict; a
    ConversionError naming the field for what lmjax cannot express."""
    kind = hf.get("model_type")
    if kind not in LAYOUTS:
        raise ConversionError(f"config.json has model_type {kind!r}; lmjax imports 'gpt2' and 'llama' "
                              "checkpoints")

    def need(field, ok, want):
        if not ok:
            raise ConversionError(f"config.json has {field}={hf.get(field)!r}; lmjax's {kind} layout "
                                  f"needs {want}")

    if kind == "gpt2":
        D = hf["n_embd"]
        need("activation_function", hf.get("activation_function", "gelu_new") in ("gelu_new", "gelu_pytorch_tanh"),
             "'gelu_new' (GELU, tanh approximation)")
        need("scale_attn_by_inverse_layer_idx", not hf.get("scale_attn_by_inverse_layer_idx"), "false")
        need("scale_attn_weights", hf.get("scale_attn_weights", True), "true")
        need("add_cross_attention", not hf.get("add_cross_attention"), "false")
        keys = dict(num_layers=hf["n_layer"], num_heads=hf["n_head"], width=D,
                    **_mlp_keys(hf.get("n_inner") or 4 * D, D), mlp="gelu", bias=True, norm="layernorm",
                    norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), positions="learned",
                    attention="mha", tie_embeddings=hf.get("tie_word_embeddings", True))
        return kind, keys, hf["n_positions"]
    D, H = hf["hidden_size"], hf["num_attention_heads"]
    K = hf.get("num_key_value_heads") or H
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    need("rope_parameters" if "rope_parameters" in hf else "rope_scaling",
         rope.get("rope_type", rope.get("type", "default")) == "default", "rope_type 'default' (no scaling)")
    need("hidden_act", hf.get("hidden_act", "silu") == "silu", "'silu'")
    need("head_dim", hf.get("head_dim") in (None, D // H) and D % H == 0,
         f"hidden_size / num_attention_heads = {D // H}")
    need("mlp_bias", bool(hf.get("mlp_bias", False)) == bool(hf.get("attention_bias", False)),
         "the same value as attention_bias (lmjax has one config.model.bias)")
    need("pretraining_tp", hf.get("pretraining_tp", 1) == 1, "1")
    attention = "mha" if K == H else "mqa" if K == 1 else "gqa"
    keys = dict(num_layers=hf["num_hidden_layers"], num_heads=H, width=D,
                num_kv_heads=K if attention == "gqa" else 0, attention=attention,
                **_mlp_keys(hf["intermediate_size"], D), mlp="swiglu", bias=bool(hf.get("attention_bias", False)),
                norm="rmsnorm", norm_eps=float(hf.get("rms_norm_eps", 1e-6)), positions="rope",
                rope_theta=float(theta), tie_embeddings=hf.get("tie_word_embeddings", False))
    return kind, keys, hf.get("max_position_embeddings", 2048)


def _mlp_keys(hidden: int, width: int) -> dict:
    """An MLP hidden width as lmjax spells it: a whole multiple of the width is mlp_ratio."""
    return {"mlp_ratio": hidden // width, "mlp_width": 0} if hidden % width == 0 else {"mlp_width": hidden}


# ------------------------------------------------------------------------------- parameter names

def _layer_names(m: ModelConfig, layout: str, i: int) -> list[tuple[str, tuple[tuple[str, ...], ...], bool]]:
    """Block i's tensors: (HF name, the lmjax paths inside the block that make it (several:
    concatenated on the last axis), transposed?)."""
    if layout == "gpt2":
        p = f"transformer.h.{i}."
        names = [(p + "ln_1.weight", (("attn_norm", "scale"),), False),
                 (p + "ln_1.bias", (("attn_norm", "bias"),), False),
                 (p + "ln_2.weight", (("mlp_norm", "scale"),), False),
                 (p + "ln_2.bias", (("mlp_norm", "bias"),), False)]
        for hf_name, path in (("attn.c_proj", ("attn", "out")), ("mlp.c_fc", ("mlp", "up")),
                              ("mlp.c_proj", ("mlp", "down"))):
            names += [(p + hf_name + ".weight", (path + ("kernel",),), False),
                      (p + hf_name + ".bias", (path + ("bias",),), False)]
        for leaf in ("kernel", "bias"):
            names.append((p + "attn.c_attn." + ("weight" if leaf == "kernel" else "bias"),
                          tuple(("attn", x, leaf) for x in ("query", "key", "value")), False))
        return names
    p = f"model.layers.{i}."
    names = [(p + "input_layernorm.weight", (("attn_norm", "scale"),), False),
             (p + "post_attention_layernorm.weight", (("mlp_norm", "scale"),), False)]
    projections = [("self_attn.q_proj", ("attn", "query")), ("self_attn.k_proj", ("attn", "key")),
                   ("self_attn.v_proj", ("attn", "value")), ("self_attn.o_proj", ("attn", "out")),
                   ("mlp.gate_proj", ("mlp", "gate")), ("mlp.up_proj", ("mlp", "up")),
                   ("mlp.down_proj", ("mlp", "down"))]
    for hf_name, path in projections:
        names.append((p + hf_name + ".weight", (path + ("kernel",),), True))
        if m.bias:
            names.append((p + hf_name + ".bias", (path + ("bias",),), False))
    return names


def _top_names(m: ModelConfig, layout: str) -> list[tuple[str, tuple[str, ...], bool]]:
    """The tensors outside the blocks: (HF name, lmjax path, transposed?)."""
    gpt2 = layout == "gpt2"
    names = [("transformer.wte.weight" if gpt2 else "model.embed_tokens.weight", ("embedding",), False),
             ("transformer.ln_f.weight" if gpt2 else "model.norm.weight", ("final_norm", "scale"), False)]
    if gpt2:
        names += [("transformer.wpe.weight", ("pos_embedding",), False),
                  ("transformer.ln_f.bias", ("final_norm", "bias"), False)]
    if not m.tie_embeddings:
        names.append(("lm_head.weight", ("unembed", "kernel"), True))
    return names


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _put(tree: dict, path, value) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _block(params, m: ModelConfig, i: int):
    """Block i of lmjax params, unrolled (block_i) or scanned (blocks, stacked on axis 0)."""
    if m.scan_layers:
        return _Indexed(params["blocks"], i)
    return params[f"block_{i}"]


class _Indexed:
    """Read-only view of layer i of a stacked (scanned) parameter tree."""

    def __init__(self, tree, i):
        self.tree, self.i = tree, i

    def __getitem__(self, k):
        v = self.tree[k]
        return _Indexed(v, self.i) if isinstance(v, dict) else v[self.i]


def to_hf(m: ModelConfig, params, layout: str) -> dict[str, np.ndarray]:
    """lmjax params (unrolled or scanned) -> {HF tensor name: array}."""
    out = {}
    for hf_name, path, transpose in _top_names(m, layout):
        x = np.asarray(_get(params, path))
        out[hf_name] = x.T if transpose else x
    for i in range(m.num_layers):
        block = _block(params, m, i)
        for hf_name, paths, transpose in _layer_names(m, layout, i):
            x = np.concatenate([np.asarray(_get(block, p)) for p in paths], axis=-1)
            out[hf_name] = x.T if transpose else x
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def from_hf(m: ModelConfig, tensors, layout: str, abstract) -> dict:
    """{HF tensor name: array} (a mapping, or a lazy reader with __getitem__ and __contains__)
    -> lmjax params as float32 numpy, shaped as `abstract` (the model's parameter shapes:
    jax.eval_shape of its init, unboxed) and stacked like it when m.scan_layers. A missing
    tensor or a wrong shape is a ConversionError naming it."""
    def read(name: str, shape: tuple[int, ...], transpose: bool) -> np.ndarray:
        if name not in tensors:
            raise ConversionError(f"the checkpoint has no tensor {name!r}; it does not match its "
                                  "config.json")
        x = np.asarray(tensors[name], dtype=np.float32)
        want = shape[::-1] if transpose else shape
        if x.shape != want:
            raise ConversionError(f"tensor {name!r} has shape {x.shape}, its config.json implies {want}")
        return x.T if transpose else x

    params: dict = {}
    for hf_name, path, transpose in _top_names(m, layout):
        _put(params, path, read(hf_name, tuple(_get(abstract, path).shape), transpose))
    def shape(path):  # of one block's parameter (scanned ones are stacked on a leading axis)
        return tuple(_get(abstract["blocks"], path).shape[1:] if m.scan_layers
                     else _get(abstract["block_0"], path).shape)

    blocks = []
    for i in range(m.num_layers):
        block: dict = {}
        for hf_name, paths, transpose in _layer_names(m, layout, i):
            widths = [shape(p)[-1] for p in paths]  # GPT-2's c_attn: query, key, value side by side
            x = read(hf_name, shape(paths[0])[:-1] + (sum(widths),), transpose)
            for p, part in zip(paths, np.split(x, np.cumsum(widths)[:-1], axis=-1)):
                _put(block, p, np.ascontiguousarray(part))
        blocks.append(block)
    if m.scan_layers:
        params["blocks"] = _stack(blocks)
    else:
        params.update({f"block_{i}": b for i, b in enumerate(blocks)})
    return params


def _stack(blocks: list[dict]) -> dict:
    return {k: _stack([b[k] for b in blocks]) if isinstance(blocks[0][k], dict)
            else np.stack([b[k] for b in blocks]) for k in blocks[0]}
