"""`lmjax finetune`: a classification head on a pretrained run, trained on a labelled task.

The backbone comes from the pretrained workdir's latest checkpoint through `lmjax.load` (so
from whatever topology wrote it), or fresh (config.finetune.random_init, the baseline); the head
is always fresh. Full fine-tuning, or the head alone (freeze_backbone: a linear probe), with the
optimiser of config.finetune (AdamW, warmup then cosine to 10%, clipping at 1). One device;
batches are a pure function of (seed, step). The fine-tuned workdir holds what a pretrained one
does (config.json with the pretrained sections plus `finetune`, run.json, metrics.jsonl,
result.json, an orbax checkpoint of {'backbone', 'head'}) plus labels.json, so `lmjax eval`,
`lmjax.load` and `run.classify` work on it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmjax import config as config_lib
from lmjax.checkpointing import Checkpointer
from lmjax.data.tasks import Examples, Task, load_task
from lmjax.errors import ConfigError, LmjaxError
from lmjax.models.classifier import Classifier, resolve_pooling
from lmjax.models.layers import unboxed
from lmjax.training.metrics import MetricsWriter
from lmjax.training.optimizer import make_optimizer
from lmjax.training.steps import TrainState
from lmjax.workdir import CHECKPOINTS, Workdir, write_json

LABELS = "labels.json"
CONFUSION_PNG = "confusion_matrix.png"
EVAL_BATCH = 256


def classifier_for(model_cfg, ft: config_lib.FinetuneConfig, num_labels: int) -> Classifier:
    return Classifier(model_cfg, num_labels, resolve_pooling(ft.pooling, model_cfg.family))


def init_classifier(model: Classifier, seed: int, length: int):
    tokens = jnp.zeros((1, length), jnp.int32)
    return unboxed(model.init(jax.random.key(seed), tokens, jnp.ones((1,), jnp.int32))["params"])


def _optimizer(ft: config_lib.FinetuneConfig, params) -> optax.GradientTransformation:
    train_cfg = config_lib.TrainConfig(lr=ft.lr, steps=max(ft.steps, 1), warmup_steps=ft.warmup_steps,
                                       weight_decay=ft.weight_decay)
    opt = make_optimizer(train_cfg)
    if not ft.freeze_backbone:
        return opt
    labels = {k: jax.tree.map(lambda _: "frozen" if k == "backbone" else "trained", v)
              for k, v in params.items()}
    return optax.multi_transform({"trained": opt, "frozen": optax.set_to_zero()}, labels)


def make_train_step(model: Classifier, optimizer, seed: int):
    def loss_fn(params, tokens_BL, lengths_B, labels_B, rng):
        logits_BC = model.apply({"params": params}, tokens_BL, lengths_B, train=True, rngs={"dropout": rng})
        return optax.softmax_cross_entropy_with_integer_labels(logits_BC, labels_B).mean()

    @jax.jit
    def train_step(state: TrainState, tokens_BL, lengths_B, labels_B):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, tokens_BL, lengths_B, labels_B, rng)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, opt_state), {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return train_step


@functools.partial(jax.jit, static_argnums=0)
def _logits(model: Classifier, params, tokens_BL, lengths_B):
    return model.apply({"params": params}, tokens_BL, lengths_B)


def predict(model: Classifier, params, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Label probabilities [N, num_labels], EVAL_BATCH examples at a time (the last batch padded,
    so one program serves every batch)."""
    out = []
    for i in range(0, len(tokens), EVAL_BATCH):
        t, n = tokens[i:i + EVAL_BATCH], lengths[i:i + EVAL_BATCH]
        pad = EVAL_BATCH - len(t)
        if pad:
            t = np.concatenate([t, np.zeros((pad, t.shape[1]), t.dtype)])
            n = np.concatenate([n, np.ones(pad, n.dtype)])
        out.append(np.asarray(jax.nn.softmax(_logits(model, params, t, n)))[:EVAL_BATCH - pad])
    return np.concatenate(out) if out else np.zeros((0, model.num_labels), np.float32)


def classification_metrics(predicted: np.ndarray, true: np.ndarray, num_labels: int) -> dict:
    """Accuracy, macro-F1 (the mean of each label's F1 over the labels that occur in `true` or
    `predicted`) and the confusion matrix (rows: true label, columns: predicted)."""
    confusion = np.zeros((num_labels, num_labels), np.int64)
    np.add.at(confusion, (true, predicted), 1)
    tp = np.diag(confusion).astype(float)
    support, called = confusion.sum(1), confusion.sum(0)
    f1 = np.where(support + called > 0, 2 * tp / np.maximum(support + called, 1), 0.0)
    present = (support + called) > 0
    return {"accuracy": float(tp.sum() / max(len(true), 1)),
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "examples": int(len(true)), "confusion_matrix": confusion.tolist()}


def evaluate_classifier(model: Classifier, params, examples: Examples) -> dict:
    probs = predict(model, params, examples.tokens, examples.lengths)
    return classification_metrics(probs.argmax(-1), examples.labels, model.num_labels)


def confusion_table(result: dict, labels) -> str:
    from tabulate import tabulate

    rows = [[f"**{t}**", *row] for t, row in zip(labels, result["confusion_matrix"])]
    return tabulate(rows, headers=["true \\ predicted", *labels], tablefmt="github")


def plot_confusion(result: dict, labels, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(result["confusion_matrix"], float)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(labels), 0.8 + 0.5 * len(labels)), dpi=100)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for (i, j), v in np.ndenumerate(m):
        if v:
            ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=6,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\naccuracy {result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def task_for(ft: config_lib.FinetuneConfig, config: config_lib.Config, tokenizer) -> Task:
    return load_task(ft.task, tokenizer, length=config.train.seq_len, val_fraction=config.data.val_fraction,
                     max_per_label=ft.max_per_label)


def finetune(ft_config, workdir: str | Path, *, force: bool = False, print_fn=print) -> dict:
    """Fine-tune per `ft_config` ({'finetune': {...}} or a FinetuneConfig) into `workdir`; the
    final metrics."""
    import lmjax

    t_start = time.perf_counter()
    ft = ft_config if isinstance(ft_config, config_lib.FinetuneConfig) else config_lib.resolve_finetune(ft_config)
    if not ft.init:
        raise ConfigError("--init is required: the workdir of a pretrained run (`lmjax train`)")
    if Path(ft.init).resolve() == Path(workdir).resolve():
        raise ConfigError(f"--workdir {workdir} is the pretrained run itself; fine-tune into a new folder")
    pre = lmjax.load(ft.init)
    if pre.finetune is not None:
        raise ConfigError(f"{ft.init} is a fine-tuned classifier; --init takes a pretrained language model")
    if pre.model_cfg.family not in config_lib.NEURAL:
        raise ConfigError(f"the {pre.model_cfg.family} family has no hidden states to put a head on; "
                          f"pretrain one of {', '.join(config_lib.NEURAL)}")
    task = task_for(ft, pre.config, pre.tokenizer)
    wd = Workdir(workdir)
    if wd.file(CHECKPOINTS).exists():
        if not force:
            raise ConfigError(f"workdir {workdir} already holds a run; use a new --workdir, or --force to "
                              "set its checkpoints aside and start over")
        wd.set_checkpoints_aside()
    wd.create()
    wd.truncate_metrics(0)

    model = classifier_for(pre.model_cfg, ft, len(task.labels))
    length = pre.config.train.seq_len
    params = init_classifier(model, ft.seed, length)
    if not ft.random_init:
        # The head replaces the LM head: an untied unembedding is not part of the backbone.
        backbone = {k: v for k, v in pre.params.items() if k in params["backbone"]}
        if jax.tree.structure(params["backbone"]) != jax.tree.structure(backbone):
            raise LmjaxError(f"the pretrained parameters of {ft.init} do not fit its own config's model")
        params = {**params, "backbone": backbone}
    optimizer = _optimizer(ft, params)
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
    train_step = make_train_step(model, optimizer, ft.seed)

    config_dict = {**pre.config.to_dict(), "finetune": dataclasses.asdict(ft)}
    wd.write_config(config_dict)
    write_json(wd.file(LABELS), list(task.labels))
    info = {"task": task.name, "labels": list(task.labels), "train_examples": len(task.train),
            "val_examples": len(task.val), "pooling": model.pooling, "pretrained": str(ft.init),
            "pretrained_step": pre.step, "family": pre.model_cfg.family,
            "params": int(sum(x.size for x in jax.tree.leaves(params))),
            "head_params": int(sum(x.size for x in jax.tree.leaves(params["head"])))}
    wd.write_run_info(info)
    print_fn(f"lmjax finetune: {pre.model_cfg.family} from {ft.init} (step {pre.step}"
             f"{', fresh parameters' if ft.random_init else ''}), {ft.task}: {len(task.labels)} labels, "
             f"{len(task.train):,} train / {len(task.val):,} held-out examples, {model.pooling} pooling, "
             f"{'head only' if ft.freeze_backbone else 'full fine-tuning'}, {ft.steps} steps")
    writer = MetricsWriter(wd)
    n = len(task.train)
    result = {}
    try:
        for step in range(ft.steps + 1):
            if step % ft.eval_every == 0 or step == ft.steps:
                ev = evaluate_classifier(model, state.params, task.val)
                row = {f"val_{k}": v for k, v in ev.items() if k != "confusion_matrix"}
                writer.write(step, row)
                print_fn(f"step {step}: val accuracy {ev['accuracy']:.4f}, macro-F1 {ev['macro_f1']:.4f}")
                result = ev
            if step == ft.steps:
                break
            idx = np.random.default_rng([ft.seed, step]).integers(0, n, size=ft.batch_size)
            state, m = train_step(state, task.train.tokens[idx], task.train.lengths[idx], task.train.labels[idx])
            if (step + 1) % max(1, ft.eval_every // 4) == 0:
                m = jax.device_get(m)
                if not math.isfinite(float(m["loss"])):
                    raise LmjaxError(f"fine-tuning loss became {float(m['loss'])} at step {step + 1}; "
                                     "lower config.finetune.lr")
                writer.write(step + 1, {k: float(v) for k, v in m.items()})
    finally:
        writer.close()
    ckpt = Checkpointer(workdir, keep=1)
    ckpt.save(ft.steps, {"params": state.params}, config=config_dict, tokenizer=pre.tokenizer.to_json())
    ckpt.wait()
    ckpt.close()
    plot_confusion(result, task.labels, wd.file(CONFUSION_PNG), f"{task.name}: {Path(workdir).name}")
    final = {"step": ft.steps, "accuracy": result["accuracy"], "macro_f1": result["macro_f1"],
             "examples": result["examples"], "labels": list(task.labels),
             "confusion_matrix": result["confusion_matrix"], "wall_time": time.perf_counter() - t_start}
    wd.write_result(final)
    return final
