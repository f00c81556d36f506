"""CS336 schedule and AdamW (Algorithm 1) against NumPy transcriptions; global-norm clipping."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import build_config
from jaxlm.train.optim import (
    AdamWState,
    build_optimizer,
    cs336_adamw,
    learning_rate_schedule,
    planned_learning_rates,
)


def np_schedule(t: int, a_max: float, a_min: float, t_w: int, t_c: int) -> float:
    """The CS336 learning-rate schedule, transcribed from the handout."""
    if t < t_w:
        return t / t_w * a_max
    if t <= t_c:
        return a_min + 0.5 * (1 + math.cos((t - t_w) / (t_c - t_w) * math.pi)) * (a_max - a_min)
    return a_min


class NumpyAdamW:
    """CS336 Algorithm 1 in float64 NumPy. Update t (1-based) uses lr_t = schedule(t); the
    decoupled weight decay lr_t * lambda * theta uses theta from before this update (as torch does)."""

    def __init__(self, params: dict, schedule, b1, b2, eps, weight_decay):
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0
        self.schedule, self.b1, self.b2, self.eps, self.wd = schedule, b1, b2, eps, weight_decay

    def step(self, params: dict, grads: dict) -> dict:
        self.t += 1
        t, lr = self.t, self.schedule(self.t)
        out = {}
        for k, theta in params.items():
            g = grads[k]
            self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
            alpha_t = lr * math.sqrt(1 - self.b2**t) / (1 - self.b1**t)
            out[k] = theta - alpha_t * self.m[k] / (np.sqrt(self.v[k]) + self.eps) - lr * self.wd * theta
        return out


def np_clip(grads: dict, max_norm: float) -> dict:
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return {k: g * scale for k, g in grads.items()}


def random_tree(rng, scale=1.0) -> dict:
    return {"w": rng.normal(size=(5, 3)) * scale, "b": rng.normal(size=(7,)) * scale}


def to_jax(tree: dict) -> dict:
    return {k: jnp.asarray(v, jnp.float32) for k, v in tree.items()}


def assert_tree_close(got: dict, want: dict, rtol=1e-5, atol=1e-6):
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k], np.float64), want[k], rtol=rtol, atol=atol, err_msg=k)


# ---------------------------------------------------------------- schedule


def cosine_schedule(a_max: float, a_min: float, t_w: int, t_c: int):
    """The run's optax schedule for these four numbers (the other keys do not enter it)."""
    return learning_rate_schedule(
        build_config(
            {
                "learning_rate": a_max,
                "min_learning_rate": a_min,
                "warmup_iters": t_w,
                "cosine_cycle_iters": t_c,
                "max_iterations": max(t_c, t_w, 1),
            }
        )
    )


def test_schedule_every_t_matches_formula():
    for t in range(26):
        want = np_schedule(t, 1.0, 0.1, 7, 21)
        got = float(cosine_schedule(1.0, 0.1, 7, 21)(t))
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7), t


def test_schedule_landmarks():
    s = lambda t: float(cosine_schedule(1.0, 0.1, 7, 21)(t))
    assert s(0) == 0.0
    assert s(7) == pytest.approx(1.0)
    assert s(14) == pytest.approx(0.55)  # halfway through the cosine
    assert s(21) == pytest.approx(0.1) and s(25) == pytest.approx(0.1)


def test_no_warmup_and_the_planned_numbers_for_the_tracker():
    no_warmup = cosine_schedule(1.0, 0.1, 0, 10)
    assert float(no_warmup(0)) == pytest.approx(1.0) and float(no_warmup(10)) == pytest.approx(0.1)
    planned = planned_learning_rates(cosine_schedule(1.0, 0.1, 7, 21), 25)
    assert len(planned) == 26 and all(isinstance(v, float) for v in planned)
    assert planned == pytest.approx([np_schedule(t, 1.0, 0.1, 7, 21) for t in range(26)], rel=1e-6, abs=1e-7)


def test_schedule_of_a_config_uses_cosine_cycle_iters(tiny_config):
    c = tiny_config(learning_rate=2.0, min_learning_rate=0.5, warmup_iters=4, max_iterations=40, cosine_cycle_iters=10)
    sched = learning_rate_schedule(c)
    for t in range(41):
        assert float(sched(t)) == pytest.approx(np_schedule(t, 2.0, 0.5, 4, 10), rel=1e-6, abs=1e-7), t
    default = learning_rate_schedule(
        tiny_config(learning_rate=2.0, min_learning_rate=0.5, warmup_iters=4, max_iterations=40)
    )
    for t in range(41):
        assert float(default(t)) == pytest.approx(np_schedule(t, 2.0, 0.5, 4, 40), rel=1e-6, abs=1e-7), t


# ---------------------------------------------------------------- AdamW

HP = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)


def make_schedule(a_max=0.01, a_min=0.001, t_w=5, t_c=15):
    return cosine_schedule(a_max, a_min, t_w, t_c), (lambda t: np_schedule(t, a_max, a_min, t_w, t_c))


def test_one_adamw_step_matches_algorithm_1():
    rng = np.random.default_rng(0)
    params, grads = random_tree(rng), random_tree(rng)
    jax_sched, np_sched = make_schedule(t_w=0)  # t_w=0: the first update runs at the full rate
    tx = cs336_adamw(jax_sched, **HP)
    state = tx.init(to_jax(params))
    updates, state = tx.update(to_jax(grads), state, to_jax(params))
    got = jax.tree.map(lambda p, u: p + u, to_jax(params), updates)
    want = NumpyAdamW(params, np_sched, **HP).step(params, grads)
    assert_tree_close(got, want)
    assert int(state.count) == 1
    # Step one of bias-corrected Adam moves every coordinate by ~lr (plus the decay): check that too.
    lr = np_sched(1)
    for k in params:
        np.testing.assert_allclose(
            want[k], params[k] * (1 - lr * HP["weight_decay"]) - lr * np.sign(grads[k]), atol=1e-6
        )


def test_twenty_adamw_steps_match_algorithm_1():
    rng = np.random.default_rng(1)
    params = random_tree(rng)
    jax_sched, np_sched = make_schedule()
    tx = cs336_adamw(jax_sched, **HP)
    update = jax.jit(tx.update)
    ref = NumpyAdamW(params, np_sched, **HP)
    p_jax, state, p_np = to_jax(params), tx.init(to_jax(params)), params
    for _ in range(20):
        grads = random_tree(rng, scale=rng.uniform(0.01, 3.0))
        updates, state = update(to_jax(grads), state, p_jax)
        p_jax = jax.tree.map(lambda p, u: p + u, p_jax, updates)
        p_np = ref.step(p_np, grads)
        assert_tree_close(p_jax, p_np, rtol=1e-5, atol=1e-6)
    assert int(state.count) == 20
    assert_tree_close(state.mu, ref.m, rtol=1e-5, atol=1e-7)
    assert_tree_close(state.nu, ref.v, rtol=1e-5, atol=1e-7)


def test_update_t_uses_schedule_of_t():
    """With warmup, update 1 must use schedule(1) = a_max / T_w, not schedule(0) = 0."""
    params = {"w": np.ones(3)}
    jax_sched, np_sched = make_schedule(a_max=0.5, t_w=5)
    tx = cs336_adamw(jax_sched, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0)
    updates, _ = tx.update(to_jax({"w": np.ones(3)}), tx.init(to_jax(params)), to_jax(params))
    np.testing.assert_allclose(np.asarray(updates["w"]), -0.1, rtol=1e-5)


# ---------------------------------------------------------------- the full chain: clip -> AdamW


def test_clipping_scales_gradient_to_max_norm(tiny_config):
    c = tiny_config(grad_clip=0.5, beta1=0.9)
    tx = build_optimizer(c, learning_rate_schedule(c))
    rng = np.random.default_rng(2)
    params = to_jax(random_tree(rng))
    big = random_tree(rng, scale=10.0)  # global norm ~ 45 > 0.5
    _, state = tx.update(to_jax(big), tx.init(params), params)
    adam_state = next(s for s in state if isinstance(s, AdamWState))
    seen = {k: np.asarray(v, np.float64) / (1 - c.beta1) for k, v in adam_state.mu.items()}  # mu_1 = (1-b1) g
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in seen.values()))
    assert norm == pytest.approx(0.5, abs=1e-6)
    for k in big:  # direction unchanged
        np.testing.assert_allclose(
            seen[k], big[k] * 0.5 / math.sqrt(sum(np.sum(g * g) for g in big.values())), rtol=1e-5
        )


def test_small_gradient_is_not_clipped(tiny_config):
    c = tiny_config(grad_clip=100.0)
    tx = build_optimizer(c, learning_rate_schedule(c))
    rng = np.random.default_rng(3)
    params, small = to_jax(random_tree(rng)), random_tree(rng)
    _, state = tx.update(to_jax(small), tx.init(params), params)
    adam_state = next(s for s in state if isinstance(s, AdamWState))
    for k in small:
        np.testing.assert_allclose(np.asarray(adam_state.mu[k]) / (1 - c.beta1), small[k], rtol=1e-5)


def test_build_optimizer_twenty_steps_match_numpy_clip_then_adamw(tiny_config):
    c = tiny_config(
        learning_rate=0.01,
        min_learning_rate=0.001,
        warmup_iters=3,
        max_iterations=20,
        cosine_cycle_iters=15,
        weight_decay=0.2,
        beta1=0.8,
        beta2=0.99,
        adam_eps=1e-6,
        grad_clip=2.0,
    )
    tx = build_optimizer(c, learning_rate_schedule(c))
    update = jax.jit(tx.update)
    rng = np.random.default_rng(4)
    params = random_tree(rng)
    ref = NumpyAdamW(params, lambda t: np_schedule(t, 0.01, 0.001, 3, 15), c.beta1, c.beta2, c.adam_eps, c.weight_decay)
    p_jax, state, p_np = to_jax(params), tx.init(to_jax(params)), params
    for _ in range(20):
        grads = random_tree(rng, scale=rng.choice([0.05, 5.0]))  # some above grad_clip, some below
        updates, state = update(to_jax(grads), state, p_jax)
        p_jax = jax.tree.map(lambda p, u: p + u, p_jax, updates)
        p_np = ref.step(p_np, np_clip(grads, c.grad_clip))
        assert_tree_close(p_jax, p_np, rtol=1e-5, atol=1e-6)
