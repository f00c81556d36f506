"""The checks of launch/gpu_check.sh that run inside Python: the machine, and correctness on the GPU.

    PYTHONPATH=. python3 scripts/gpu_check.py env [--missing]   # versions and devices (or: missing imports)
    PYTHONPATH=. python3 scripts/gpu_check.py correct           # the GPU against the CPU, one process
    ... [--rehearse]                                            # shrunk, the "GPU" side on the CPU

`launch/gpu_check.sh` calls this (each under its own timeout) and turns what it prints into the one table
(scripts/gpu_report.py). Every result is one JSON line with "part", "case", "result", "limit" and
"status" ("ok", "FAILED" or "info") plus its raw numbers; the exit status is 1 when any check FAILED.
`--rehearse` is the rehearsal: the "GPU" side runs on the CPU backend, so every line is produced
the same way and only the numbers lose their meaning.

`correct` runs in one process, where JAX has both the accelerator and the CPU backend:
- train: the sharded train step (jaxlm.train.sharding, as the Trainer builds it) of a small model,
  20 steps from the same initial state and the same batches on both backends. float32 on the GPU at
  "highest" matmul precision must give the CPU's losses within 1e-4 relative (at JAX's default precision
  NVIDIA GPUs run float32 matmuls as TF32, about 3 significant digits: that row is printed as info);
  bfloat16 on the GPU (attention kernel chosen as a run chooses it, jaxlm.train.kernels) must stay
  within the CPU precision test's tolerance of the CPU's float32 losses (tests/train/test_precision.py:
  max relative difference under 0.05).
- attention: cuDNN flash attention (jaxlm.model.attention.cudnn_attention) against jaxlm's kernel in
  bfloat16 at the 17M model's attention shape, forward and the gradients of q, k, v, as the relative
  error ||a - b|| / ||b||, at most 1e-2 (the bfloat16 tolerance of tests/model/test_model.py's RMSNorm
  test). On the CPU, which has no cuDNN, XLA's dot_product_attention stands in for it.
- kv_cache: the cached forward (prefill 5 tokens, then one at a time) gives the full forward's logits at
  every position, within tests/model/test_generate.py's tolerance (1e-5 absolute and relative), float32.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

import numpy as np

# modules jaxlm imports when it trains (pyproject's dependencies minus the download-only ones), and the
# distribution that provides each: what launch/gpu_check.sh installs from --wheels when one is missing
TRAIN_IMPORTS = {
    "jax": "jax",
    "flax": "flax",
    "optax": "optax",
    "orbax.checkpoint": "orbax-checkpoint",
    "numpy": "numpy",
    "matplotlib": "matplotlib",
    "tensorboardX": "tensorboardX",
    "tokenizers": "tokenizers",
    "tqdm": "tqdm",
    "safetensors": "safetensors",
}
TRAIN_STEPS = 20
F32_RTOL = 1e-4
BF16_RTOL = 0.05  # tests/train/test_precision.py: max |bf16 - f32| / f32 over the losses
ATTENTION_RTOL = 1e-2  # tests/model/test_model.py: bfloat16 RMSNorm, rtol 1e-2
KV_TOL = 1e-5  # tests/model/test_generate.py: atol = rtol = 1e-5
SMALL = {  # the train check's model: small enough to compile in seconds, big enough for cuDNN (head_dim 16)
    "vocab_size": 512,
    "context_length": 64,
    "d_model": 64,
    "num_layers": 2,
    "num_heads": 4,
    "d_ff": 192,
    "batch_size": 8,
    "max_iterations": 100,
    "warmup_iters": 5,
    "learning_rate": 1e-2,
    "min_learning_rate": 1e-3,
}
TINY = {
    **SMALL,
    "warmup_iters": 1,
    "vocab_size": 256,
    "context_length": 16,
    "d_model": 32,
    "num_layers": 1,
    "num_heads": 2,
    "d_ff": 64,
}


def emit(part: str, case: str, result: str, limit: str, status: str, **numbers) -> bool:
    print(json.dumps({"part": part, "case": case, "result": result, "limit": limit, "status": status, **numbers}))
    sys.stdout.flush()
    return status != "FAILED"


def verdict(ok: bool) -> str:
    return "ok" if ok else "FAILED"


def missing_imports() -> list[str]:
    """Distributions of TRAIN_IMPORTS whose module does not import here."""
    missing = []
    for module, dist in TRAIN_IMPORTS.items():
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - ImportError or a broken install: either way it must come from --wheels
            missing.append(dist)
    return missing


def env(a: argparse.Namespace) -> int:
    """--missing: the distribution names to install, one a line. Otherwise one info line per fact."""
    if a.missing:
        print("\n".join(missing_imports()))
        return 0
    import jax

    device = "cpu" if a.rehearse else "gpu"
    versions = []
    for module in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "tensorboardX", "tokenizers", "torch"):
        try:
            versions.append(f"{module} {importlib.import_module(module).__version__}")
        except Exception:  # noqa: BLE001 - torch may be absent; the rest was checked by --missing
            versions.append(f"{module} missing")
    emit("env", "python", sys.version.split()[0], "", "info")
    emit("env", "packages", ", ".join(versions), "", "info")
    try:
        devices = jax.devices(device)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        emit("env", f"{device} devices", f"JAX found none ({first[:200]})", "", "FAILED")
        return 1
    kinds = sorted({d.device_kind for d in devices})
    emit("env", f"{device} devices", f"{len(devices)} x {', '.join(kinds)}", "", "ok", device_kind=kinds[0])
    return 0


def batches(c, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Arithmetic sequences with a random start and stride per row: learnable, so the losses move."""
    out = []
    for step in range(steps):
        rng = np.random.default_rng(1000 + step)
        start = rng.integers(0, c.vocab_size, (c.batch_size, 1))
        stride = rng.integers(1, 8, (c.batch_size, 1))
        seq = ((start + stride * np.arange(c.context_length + 1)) % c.vocab_size).astype(np.int32)
        out.append((seq[:, :-1], seq[:, 1:]))
    return out


def train_losses(c, host_state, data, precision: str | None = None) -> tuple[np.ndarray, str]:
    """Losses of TRAIN_STEPS sharded train steps of config `c` from `host_state`; and the attention kernel."""
    import contextlib

    import jax

    from jaxlm.train.kernels import compile_with_attention
    from jaxlm.train.optim import build_optimizer, learning_rate_schedule
    from jaxlm.train.sharding import Layout, abstract_model, build_mesh, compile_train_step

    mesh = build_mesh(c)
    tx = build_optimizer(c, learning_rate_schedule(c))
    abstract = abstract_model(c)[1]
    layout = Layout.for_mesh(mesh, abstract, jax.eval_shape(tx.init, abstract))  # init_state's layout
    with jax.default_matmul_precision(precision) if precision else contextlib.nullcontext():
        params, opt_state = jax.device_put(host_state, (layout.params, layout.opt_state))

        def compile_for(kc):
            return compile_train_step(kc, abstract_model(kc)[0], tx, layout, params, opt_state)

        step, choice = compile_with_attention(c, mesh.devices.flat[0].platform, compile_for)
        losses = []
        for x, y in data:
            xs, ys = layout.put_batch(x, y, c.batch_size)
            params, opt_state, metrics = step(params, opt_state, xs, ys)
            losses.append(float(metrics["loss"]))
    return np.array(losses), choice.kernel


def check_train(device: str, shape: dict, steps: int) -> bool:
    import jax

    from jaxlm.config import build_config
    from jaxlm.train.optim import build_optimizer, learning_rate_schedule
    from jaxlm.train.sharding import build_mesh, init_state

    cpu = build_config({**shape, "device": "cpu"})
    mesh = build_mesh(cpu)
    _, params, opt_state, _ = init_state(cpu, build_optimizer(cpu, learning_rate_schedule(cpu)), mesh)
    host = jax.device_get((params, opt_state))  # one initial state for every run
    data = batches(cpu, steps)
    ref, _ = train_losses(cpu, host, data)
    # the reference itself learns, or the comparisons below mean little (a few rehearsal steps may not)
    ok = bool(ref[-1] < ref[0] - 0.5) or steps < TRAIN_STEPS
    emit("train", f"cpu float32, {steps} steps", f"loss {ref[0]:.4f} -> {ref[-1]:.4f}", "falls by > 0.5",
         verdict(ok) if steps >= TRAIN_STEPS else "info", losses=ref.tolist())  # fmt: skip
    rel = lambda got: float(np.max(np.abs(got - ref) / np.abs(ref)))
    f32 = build_config({**shape, "device": device})
    got, _ = train_losses(f32, host, data, "highest")
    ok &= emit("train", f"{device} float32 (highest) vs cpu", f"max rel diff {rel(got):.2e}", f"<= {F32_RTOL:g}",
               verdict(rel(got) <= F32_RTOL), losses=got.tolist())  # fmt: skip
    if device == "gpu":  # on the CPU default and highest precision are the same program
        got, _ = train_losses(f32, host, data)
        emit("train", f"{device} float32 (default: TF32) vs cpu", f"max rel diff {rel(got):.2e}", "", "info",
             losses=got.tolist())  # fmt: skip
    bf16 = build_config({**shape, "device": device, "dtype": "bfloat16"})
    got, kernel = train_losses(bf16, host, data)
    ok &= emit("train", f"{device} bfloat16 ({kernel} attention) vs cpu float32", f"max rel diff {rel(got):.2e}",
               f"< {BF16_RTOL:g}", verdict(rel(got) < BF16_RTOL), losses=got.tolist())  # fmt: skip
    return ok


def check_attention(device: str, shape: tuple[int, int, int, int]) -> bool:
    import jax
    import jax.numpy as jnp

    from jaxlm.model.attention import cudnn_attention, self_attention

    dev = jax.devices(device)[0]
    rng = np.random.default_rng(7)
    q, k, v, w = (jax.device_put(rng.normal(size=shape).astype(np.float32), dev) for _ in range(4))
    if device == "gpu":
        other, name = cudnn_attention, "cudnn"
    else:  # the CPU has no cuDNN: XLA's implementation of the same function stands in
        other, name = (lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)), "xla (cuDNN stand-in)"
    mine = lambda q, k, v: self_attention(q, k, v, "jaxlm")

    def fwd_and_grads(f):
        def loss(q, k, v):
            return jnp.sum(f(q, k, v).astype(jnp.float32) * w)

        run = jax.jit(lambda q, k, v: (f(q, k, v), *jax.grad(loss, argnums=(0, 1, 2))(q, k, v)))
        return [np.asarray(a, np.float32) for a in run(*(x.astype(jnp.bfloat16) for x in (q, k, v)))]

    try:
        theirs = fwd_and_grads(other)
    except Exception as e:  # noqa: BLE001 - cuDNN refusing this shape/version is the finding
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        return emit("attention", f"{name} vs jaxlm, bfloat16 {shape}", f"{name} failed: {why}", "", "FAILED")
    ours = fwd_and_grads(mine)
    ok = True
    for label, a, b in zip(("forward", "dq", "dk", "dv"), theirs, ours):
        err = float(np.linalg.norm(a - b) / np.linalg.norm(b))
        good = bool(np.isfinite(a).all()) and err <= ATTENTION_RTOL
        ok &= emit("attention", f"{name} vs jaxlm {label}, bfloat16 B,T,H,D={shape}", f"rel err {err:.2e}",
                   f"<= {ATTENTION_RTOL:g}", verdict(good), rel_err=err)  # fmt: skip
    return ok


def check_kv_cache(device: str, shape: dict) -> bool:
    import jax
    from flax import nnx

    from jaxlm.config import build_config
    from jaxlm.model.decode import forward_cached, init_cache
    from jaxlm.model.transformer import build_model

    c = build_config({**shape, "context_length": 16, "device": device})
    with jax.default_device(jax.devices(device)[0]), jax.default_matmul_precision("highest"):
        model = build_model(c)
        ids_BxT = jax.random.randint(jax.random.key(1), (2, 16), 0, c.vocab_size)
        full = np.asarray(nnx.jit(lambda m, ids: m(ids))(model, ids_BxT))
        step = nnx.jit(forward_cached)
        logits, cache = step(model, ids_BxT[:, :5], init_cache(model, 2, 16), 0)
        pieces = [np.asarray(logits)]
        for pos in range(5, 16):
            logits, cache = step(model, ids_BxT[:, pos : pos + 1], cache, pos)
            pieces.append(np.asarray(logits))
    cached = np.concatenate(pieces, axis=1)
    err = float(np.max(np.abs(cached - full) / (KV_TOL + KV_TOL * np.abs(full))))  # <= 1 is allclose
    diff = float(np.max(np.abs(cached - full)))
    return emit("kv_cache", f"{device} cached vs full forward, float32, 16 positions", f"max abs diff {diff:.2e}",
                f"atol = rtol = {KV_TOL:g}", verdict(err <= 1.0), max_abs_diff=diff)  # fmt: skip


def correct(a: argparse.Namespace) -> int:
    """--rehearse: the same checks with the "GPU" side on the CPU, tiny shapes and few steps."""
    device = "cpu" if a.rehearse else "gpu"
    model, steps = (TINY, 4) if a.rehearse else (SMALL, TRAIN_STEPS)
    ok = check_train(device, model, steps)
    ok &= check_attention(device, (1, 32, 2, 16) if a.rehearse else (2, 256, 16, 32))  # 17M's B,T,H,D at B=2
    ok &= check_kv_cache(device, model)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("env", "correct"))
    p.add_argument("--rehearse", action="store_true", help="the checks shrunk, with the GPU side on the CPU")
    p.add_argument("--missing", action="store_true", help="env: print the missing distributions and stop")
    a = p.parse_args(argv)
    return env(a) if a.what == "env" else correct(a)


if __name__ == "__main__":
    sys.exit(main())
