"""Attention variants x model size at a fixed token budget per parameter.

    lmjax sweep --config experiments/attention_variants/config.py:cpu --dry-run   # list the runs
    lmjax sweep --config experiments/attention_variants/config.py:cpu --parallel 2
    lmjax sweep --config experiments/attention_variants/config.py:gpu --slurm --slurm_gpus_per_run 1

Variants: multi-head (`mha`), multi-query (`mqa`: one key/value head), grouped-query (`gqa`:
two key/value heads), sliding window (`window`: multi-head, each token sees its 32 most recent
positions) and `linear` attention. Each variant is trained at every size for TOKENS_PER_PARAM
training tokens per non-embedding parameter (Chinchilla's 20), so every run's steps follow from
its own parameter count (`budget_steps`): the variants with fewer key/value parameters train on
proportionally fewer tokens.

`cpu`: 5 variants x 4 tiny sizes = 20 runs, byte-level Python stdlib (no download), context 128,
each run SEEDS seeds trained together (config.train.replicas: one program, the seeds' losses in
each run's metrics, their mean and spread in the report). Sized to fit in about an hour on a
2-core CPU (see `--dry-run` for the estimate).
`gpu`: the same variants at widths 256..1024, context 1024, bfloat16 compute.

Each run's final validation loss is evaluated on the whole validation split (every byte once,
lmjax/training/evaluation.py), with its standard error over windows; the periodic evaluations
during training score eval_batches x batch_size windows spread evenly over the split.

Runs land in experiments/attention_variants/runs/<arg>/<run name>/.
"""

from lmjax.config import base_config

TOKENS_PER_PARAM = 20
SEEDS = 3  # per run of the cpu sweep: seeds 0, 1, 2

VARIANTS = {
    "mha": {"model.attention": "mha"},
    "mqa": {"model.attention": "mqa", "model.num_kv_heads": 1},
    "gqa": {"model.attention": "gqa", "model.num_kv_heads": 2},
    "window": {"model.attention": "mha", "model.window": 32},
    "linear": {"model.attention": "linear"},
}

# name -> (num_layers, num_heads, width). Four heads at least, so that grouped-query attention
# (two kv heads) sits strictly between multi-query and multi-head.
SIZES = {
    "cpu": {
        "L1-W32": (1, 4, 32),
        "L2-W48": (2, 4, 48),
        "L2-W64": (2, 4, 64),
        "L3-W96": (3, 4, 96),
    },
    "gpu": {
        "L4-W256": (4, 4, 256),
        "L6-W384": (6, 6, 384),
        "L8-W512": (8, 8, 512),
        "L12-W768": (12, 12, 768),
        "L16-W1024": (16, 16, 1024),
    },
}


def get_config(arg="cpu"):
    arg = arg or "cpu"
    if arg not in SIZES:
        raise ValueError(f"attention_variants: unknown arg {arg!r}; use one of {', '.join(SIZES)}")
    c = base_config()
    c.data.corpus = "stdlib"
    c.data.tokenizer = "byte"
    c.model.num_layers, c.model.num_heads, c.model.width = SIZES[arg][next(iter(SIZES[arg]))]
    c.train.update(lr=3e-3, warmup_steps=20, schedule="cosine", log_every=10, eval_every=500,
                   eval_batches=16, checkpoint_every=250)
    c.sample.prompt = ""
    if arg == "cpu":
        c.train.update(batch_size=16, seq_len=128, replicas=SEEDS)
    else:
        c.model.dtype = "bfloat16"
        c.train.update(batch_size=64, seq_len=1024, lr=1e-3, warmup_steps=200, eval_every=1000,
                       eval_batches=32, checkpoint_every=1000)
    return c


def get_sweep(arg="cpu"):
    from lmjax.sweeps import budget_steps, derive, product

    arg = arg or "cpu"
    base = get_config(arg)
    sizes = {name: {"model.num_layers": L, "model.num_heads": H, "model.width": W}
             for name, (L, H, W) in SIZES[arg].items()}
    sweep = product(attention=VARIANTS, size=sizes)
    steps = budget_steps(base, TOKENS_PER_PARAM)

    def schedule(point):
        n = steps(point)["train.steps"]
        return {"train.steps": n, "train.warmup_steps": max(10, n // 20)}

    return derive(sweep, schedule)
