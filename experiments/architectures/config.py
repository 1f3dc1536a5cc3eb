"""The Transformer against the models it replaced, at a fixed token budget per parameter.

    lmjax sweep --config experiments/architectures/config.py --dry-run   # list the runs
    lmjax sweep --config experiments/architectures/config.py             # ~1.5 h on a 2-core CPU
    lmjax report experiments/architectures

Byte-level Python stdlib (no download), context 128, batch 16, every neural run trained for
TOKENS_PER_PARAM (Chinchilla's 20) tokens per non-embedding parameter, so each run's steps follow
from its own parameter count (`budget_steps`), as in experiments/attention_variants:

- `decoder`: the pre-norm Transformer (RoPE, RMSNorm, multi-head attention), 4 sizes;
- `lstm1`, `lstm2`: LSTM language models of 1 and 2 layers (Kaplan et al. 2020, section 3.2),
  4 widths each, sized to about the decoder's non-embedding parameter counts;
- `gru1`, `gru2`, `rnn1`, `rnn2`: the same with GRU cells and with plain tanh (Elman) cells, at
  about the LSTMs' parameter counts (the GRU has 3 gates to the LSTM's 4, the Elman cell 1, so
  they are wider: the Elman cell exactly twice the LSTM's width);
- `mlp`: Bengio et al. (2003), the previous 8 bytes' embeddings through one tanh layer, 4 widths
  (evaluated with a sliding window, so every scored byte has its 7 previous bytes);
- `ngram`: interpolated modified Kneser-Ney of orders 1-6, counted over the same training split.

Every run's final evaluation scores the whole validation split (every byte once, in windows of
128, lmjax/training/evaluation.py) and records the loss at each position of the window, for the
loss-against-position plot; the periodic ones during training score EVAL_BATCHES x 16 windows
spread evenly over the split.
Runs land in experiments/architectures/runs/default/<run name>/.
"""

from lmjax.config import base_config

TOKENS_PER_PARAM = 20
EVAL_BATCHES = 32



def _recurrent(family: str, num_layers: int, widths) -> dict:
    return {f"s{i + 1}": {"model.family": family, "model.num_layers": num_layers, "model.width": w}
            for i, w in enumerate(widths)}


# family label -> {size label: overrides}; about 12k, 50k, 100k and 330k non-embedding parameters
NEURAL = {
    "decoder": {
        "s1": {"model.num_layers": 1, "model.num_heads": 4, "model.width": 32},
        "s2": {"model.num_layers": 2, "model.num_heads": 4, "model.width": 48},
        "s3": {"model.num_layers": 2, "model.num_heads": 4, "model.width": 64},
        "s4": {"model.num_layers": 3, "model.num_heads": 4, "model.width": 96},
    },
    "lstm1": _recurrent("lstm", 1, (40, 80, 112, 200)),
    "lstm2": _recurrent("lstm", 2, (28, 56, 80, 144)),
    "gru1": _recurrent("gru", 1, (46, 92, 129, 231)),
    "gru2": _recurrent("gru", 2, (32, 65, 92, 166)),
    "rnn1": _recurrent("rnn", 1, (80, 160, 224, 400)),
    "rnn2": _recurrent("rnn", 2, (56, 112, 160, 288)),
    "mlp": {f"s{i + 1}": {"model.family": "mlp", "model.num_layers": 1, "model.width": w}
            for i, w in enumerate((40, 80, 112, 200))},
}
NGRAM_ORDERS = (1, 2, 3, 4, 5, 6)


def get_config(arg=None):
    if arg:
        raise ValueError(f"architectures takes no arg, got {arg!r}")
    c = base_config()
    c.data.corpus = "stdlib"
    c.data.tokenizer = "byte"
    c.train.update(batch_size=16, seq_len=128, lr=3e-3, warmup_steps=20, schedule="cosine", log_every=10,
                   eval_every=500, eval_batches=EVAL_BATCHES, checkpoint_every=250)
    c.sample.prompt = ""
    return c


def get_sweep(arg=None):
    from lmjax.sweeps import budget_steps, chain, derive

    base = get_config(arg)
    steps = budget_steps(base, TOKENS_PER_PARAM)

    def schedule(point):
        n = steps(point)["train.steps"]
        return {"train.steps": n, "train.warmup_steps": max(10, n // 20)}

    neural = [{**overrides, "family": family, "size": size}
              for family, sizes in NEURAL.items() for size, overrides in sizes.items()]
    neural = derive([_point(p) for p in neural], schedule)
    ngrams = [_point({"model.family": "ngram", "model.order": k, "family": "ngram", "size": f"o{k}"})
              for k in NGRAM_ORDERS]
    return chain(neural, ngrams)


def _point(spec: dict):
    """A sweep point named `family-<family>_size-<size>` from overrides plus those two labels."""
    from lmjax.sweeps import Point

    labels = [("family", spec.pop("family")), ("size", spec.pop("size"))]
    return Point(spec, labels=labels)
