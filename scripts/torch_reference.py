"""PyTorch speed reference for jaxlm: the same CS336 transformer and train step, timed per step.

    PYTHONPATH=. python3 scripts/torch_reference.py --config configs/tinystories_17m.json \
        --batch-sizes 32,64,128 --dtype bfloat16 --device cuda --compile [--set KEY=VALUE ...]

One JSON line per batch size: {"impl": "torch-compile"|"torch-eager", "tokens_per_sec", "step_ms", "mfu", ...}.
The project's copy of the reference kept outside the repository (../shared/bench/torch_reference.py),
adapted so that launch/gpu_check.sh can put it beside `python -m jaxlm.bench` on the same GPU:
- the config is read with jaxlm's own loader (`--set` overrides, d_ff resolved as jaxlm resolves it);
- `--device` and `--dtype`: bfloat16 is autocast (float32 params, bf16 matmuls and attention, float32
  loss), as jaxlm's dtype "bfloat16"; float32 allows TF32 matmuls on CUDA, as JAX's default precision
  does there (jaxlm.train.hardware holds both to the same peak);
- the compiled function is the forward *and* the loss (the logits never leave the compiled graph),
  each batch size compiled statically (`dynamic=False`); AdamW is fused on CUDA;
- timing as jaxlm.bench: warm-up steps, then the median of `--steps` steps, each synchronised by
  `loss.item()`; `compile_s` is the first step (torch.compile compiles when first called);
- FLOPs per token and MFU as jaxlm counts them (6 N + 12 L T d_model; the datasheet peak of the device).
The model matches jaxlm's: pre-norm RMSNorm (float32, eps 1e-5), RoPE on adjacent pairs, causal SDPA,
SwiGLU, no biases, untied head. torch is not a dependency of jaxlm: this script needs it installed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from jaxlm.config import load_config
from jaxlm.train.flops import flops_per_token
from jaxlm.train.hardware import peak_flops


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight).to(x.dtype)


def rope_tables(t, d, theta):
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = torch.arange(t, dtype=torch.float32)[:, None] * inv[None, :]
    return ang.cos(), ang.sin()


def apply_rope(x, cos, sin):  # x: B,H,T,Dh ; adjacent pairs
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2).to(x.dtype)


class Block(nn.Module):
    def __init__(self, d, h, f):
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = RMSNorm(d), RMSNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.w1, self.w3 = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False)
        self.w2 = nn.Linear(f, d, bias=False)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        h = self.ln1(x)
        q, k, v = (m(h).view(b, t, self.h, d // self.h).transpose(1, 2) for m in (self.q, self.k, self.v))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        h = self.ln2(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class LM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.emb = nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = nn.ModuleList(Block(c.d_model, c.num_heads, c.ffn_dim) for _ in range(c.num_layers))
        self.ln_f = RMSNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        cos, sin = rope_tables(c.context_length, c.head_dim, c.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, idx):
        x = self.emb(idx)
        for blk in self.blocks:
            x = blk(x, self.cos[: idx.shape[1]], self.sin[: idx.shape[1]])
        return self.head(self.ln_f(x))


def bench(c, a, batch: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = LM(c).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=c.learning_rate,
        betas=(c.beta1, c.beta2),
        eps=c.adam_eps,
        weight_decay=c.weight_decay,
        **fused,
    )
    half = a.dtype == "bfloat16"

    def loss_of(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=half):
            logits = model(x)
        return F.cross_entropy(logits.float().view(-1, c.vocab_size), y.view(-1))

    loss_fn = torch.compile(loss_of, dynamic=False) if a.compile else loss_of
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, c.vocab_size, (batch, c.context_length), generator=g).to(device) for _ in range(2))

    def step():
        loss = loss_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        opt.step()
        return loss.item()

    t0 = time.perf_counter()
    step()
    compile_s = time.perf_counter() - t0
    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    tokens_per_sec = batch * c.context_length / step_s
    fpt = flops_per_token(c)
    kind = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_flops(kind, "gpu", a.dtype) if device.type == "cuda" else None
    return {
        "impl": "torch-compile" if a.compile else "torch-eager",
        "torch": torch.__version__,
        "device_kind": kind,
        "params": n_params,
        "batch_size": batch,
        "context_length": c.context_length,
        "dtype": a.dtype,
        "flops_per_token": fpt,
        "compile_s": round(compile_s, 3),
        "steps": a.steps,
        "step_ms": round(step_s * 1e3, 3),
        "tokens_per_sec": round(tokens_per_sec, 1),
        "gflops_per_sec": round(fpt * tokens_per_sec / 1e9, 3),
        "mfu": None if peak is None else round(fpt * tokens_per_sec / peak, 5),
        "final_loss": round(loss, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch-sizes", default=None, help="comma-separated (default: the config's batch_size)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    c = load_config(a.config, a.overrides)
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    batches = [int(b) for b in a.batch_sizes.split(",")] if a.batch_sizes else [c.batch_size]
    for batch in batches:
        print(json.dumps({"config": a.config, **bench(c, a, batch, device)}), flush=True)


if __name__ == "__main__":
    main()
