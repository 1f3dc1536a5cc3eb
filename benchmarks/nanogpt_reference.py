"""A same-time PyTorch reference for the CPU throughput goal: nanoGPT's model and step, timed here.

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    /tmp/torchvenv/bin/python benchmarks/nanogpt_reference.py --shape baby [--steps 50]
    /tmp/torchvenv/bin/python benchmarks/nanogpt_reference.py --shape default --steps 5

Why: this host's speed drifts (its float32 matmul ran at 145-280 GFLOP/s on different days), so
a reference figure taken on another day cannot decide a 1.3x goal; this one runs next to lmjax's
harness. The model is nanoGPT's `model.py` written out (pre-LayerNorm without biases as its
train.py default, learned positions, fused c_attn, GELU MLP x4, tied lm_head,
`F.scaled_dot_product_attention(is_causal=True)`), the step is its train.py's (forward, backward,
clip 1.0, AdamW with decay on 2-D weights, eager, float32, 2 threads). torch is not an lmjax
dependency: install it in a separate venv as above.

Prints one JSON line: shape, median/p10/p90 ms per step, tokens/s, torch version, threads.
"""

from __future__ import annotations

import argparse  # not absl: this runs under the PyTorch venv, without lmjax's dependencies
import contextlib
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES = {  # nanoGPT's README: the CPU "baby" run, and config/train_shakespeare_char.py
    "baby": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12),
    "default": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64),
}
VOCAB = 65  # tinyshakespeare characters


class Block(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.h = h
        self.ln_1, self.ln_2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(D, dim=2)
        q, k, v = (t.view(B, T, self.h, D // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, D))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, block_size):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, n_embd), nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=False)
        self.lm_head = nn.Linear(n_embd, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as nanoGPT
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))


def make_step(shape: str, threads: int = 2, around_update=contextlib.nullcontext):
    """nanoGPT's model, AdamW and train step for `shape` on a fixed random batch: returns
    `step() -> loss`. `around_update`: a context manager the clip, AdamW update and zero_grad run
    inside (a profiler's scope)."""
    torch.manual_seed(1337)
    torch.set_num_threads(threads)
    s = SHAPES[shape]
    model = GPT(s["n_layer"], s["n_head"], s["n_embd"], s["block_size"])
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.99))
    x = torch.randint(0, VOCAB, (s["batch_size"], s["block_size"]))
    y = torch.randint(0, VOCAB, (s["batch_size"], s["block_size"]))

    def step():
        loss = model(x, y)
        loss.backward()
        with around_update():
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss.item()  # synchronises, as nanoGPT's logging does

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=SHAPES, default="baby")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    s = SHAPES[args.shape]
    step = make_step(args.shape, args.threads)

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    times.sort()
    med = statistics.median(times)
    tokens = s["batch_size"] * s["block_size"]
    print(json.dumps({"shape": args.shape, **s, "steps": args.steps, "step_ms_median": med * 1e3,
                      "step_ms_p10": times[len(times) // 10] * 1e3,
                      "step_ms_p90": times[(9 * len(times)) // 10] * 1e3, "tokens_per_s": tokens / med,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
