"""Tests for jaxfast.optim: one-cycle schedules, discriminative lrs, layer groups and the
multi_transform optimizer (freezing, train_bn, per-group rates, decoupled wd, clipping)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfast.optim import (
    batchnorm_mask,
    current_lrs,
    discriminative_lrs,
    label_layer_groups,
    make_optimizer,
    no_decay_mask,
    one_cycle_lr,
    one_cycle_momentum,
)


# ----------------------------------------------------------------------------- references


def _annealing_cos(start, end, pct):
    """fastai v1 `annealing_cos`."""
    return end + (start - end) / 2 * (np.cos(np.pi * pct) + 1)


def _fastai_one_cycle(phases, total):
    """Values used at each batch by fastai v1's OneCycleScheduler, by simulating its
    callback: the first phase's start on train begin, then Scheduler.step() after
    every batch (n += 1, value at n/n_iter), moving on when a phase is done."""
    vals, idx, n = [], 0, 0
    val = phases[0][0]
    for _ in range(total):
        vals.append(val)
        start, end, n_iter = phases[idx]
        n += 1
        val = _annealing_cos(start, end, n / n_iter)
        if n >= n_iter:
            idx, n = idx + 1, 0
            if idx == len(phases):
                break
    return np.array(vals)


def _ref_lrs(lr_max, total, pct_start=0.3, div=25.0, final_div=1e4):
    n1 = int(total * pct_start)
    return _fastai_one_cycle([(lr_max / div, lr_max, n1), (lr_max, lr_max / (div * final_div), total - n1)], total)


def _ref_moms(total, pct_start=0.3, moms=(0.95, 0.85)):
    n1 = int(total * pct_start)
    return _fastai_one_cycle([(moms[0], moms[1], n1), (moms[1], moms[0], total - n1)], total)


# ----------------------------------------------------------------------------- schedules


def test_one_cycle_lr_key_steps():
    lr_max, total = 1e-2, 100
    n1 = int(total * 0.3)
    sched = one_cycle_lr(lr_max, total)
    ref = _ref_lrs(lr_max, total)
    steps = [0, n1 // 2, n1, n1 + (total - n1) // 2, total - 1]
    got = np.array([float(sched(s)) for s in steps])
    np.testing.assert_allclose(got, ref[steps], rtol=1e-5)
    assert got[0] == pytest.approx(lr_max / 25, rel=1e-5)
    assert got[2] == pytest.approx(lr_max, rel=1e-5)
    # Also jit-safe with a traced int32 step count, as optax calls it.
    jitted = jax.jit(sched)
    np.testing.assert_allclose([float(jitted(jnp.int32(s))) for s in steps], ref[steps], rtol=1e-5)


@pytest.mark.parametrize("total,pct", [(37, 0.25), (10, 0.3), (8, 1.0)])
def test_one_cycle_lr_all_steps(total, pct):
    sched = one_cycle_lr(3e-3, total, pct_start=pct, div=10.0, final_div=100.0)
    got = np.array(jax.vmap(sched)(jnp.arange(total)))
    np.testing.assert_allclose(got, _ref_lrs(3e-3, total, pct, 10.0, 100.0)[:total], rtol=1e-5)


def test_one_cycle_lr_without_warmup():
    """pct_start=0 leaves phase 1 empty: start at lr_max and anneal over every step."""
    sched = one_cycle_lr(1e-2, 5, pct_start=0.0)
    ref = [_annealing_cos(1e-2, 1e-2 / 25e4, i / 5) for i in range(5)]
    np.testing.assert_allclose(np.array(jax.vmap(sched)(jnp.arange(5))), ref, rtol=1e-5)


def test_one_cycle_momentum():
    total = 100
    n1 = int(total * 0.3)
    sched = one_cycle_momentum(total)
    ref = _ref_moms(total)
    steps = [0, n1 // 2, n1, n1 + (total - n1) // 2, total - 1]
    got = np.array([float(sched(s)) for s in steps])
    np.testing.assert_allclose(got, ref[steps], rtol=1e-6)
    assert got[0] == pytest.approx(0.95) and got[2] == pytest.approx(0.85)
    np.testing.assert_allclose(
        np.array(jax.vmap(one_cycle_momentum(23, 0.4, (0.9, 0.8)))(jnp.arange(23))),
        _ref_moms(23, 0.4, (0.9, 0.8)),
        rtol=1e-6,
    )


def test_schedule_bad_input():
    with pytest.raises(ValueError, match="total_steps"):
        one_cycle_lr(1e-3, 0)
    with pytest.raises(ValueError, match="pct_start"):
        one_cycle_momentum(10, pct_start=1.5)
    with pytest.raises(ValueError, match="lr_max"):
        one_cycle_lr(-1.0, 10)


def test_discriminative_lrs():
    assert discriminative_lrs(1e-3, 3) == [1e-3] * 3
    assert discriminative_lrs(slice(None, 1e-3), 3) == pytest.approx([1e-4, 1e-4, 1e-3])
    assert discriminative_lrs(slice(1e-6, 1e-4), 3) == pytest.approx([1e-6, 1e-5, 1e-4])
    lo, hi, n = 1e-5, 1e-2, 4
    assert discriminative_lrs(slice(lo, hi), n) == pytest.approx([lo * (hi / lo) ** (i / (n - 1)) for i in range(n)])
    assert discriminative_lrs(slice(1e-5, 1e-3), 1) == pytest.approx([1e-3])


@pytest.mark.parametrize(
    "lr,n,match",
    [
        (slice(1e-3, 1e-5), 3, "start must be <= stop"),
        (slice(-1e-5, 1e-3), 3, "-1e-05"),
        (slice(None, 0.0), 3, "0.0"),
        (-0.1, 2, "-0.1"),
        (1e-3, 0, "n_groups"),
        (slice(1e-5, None), 2, "stop"),
    ],
)
def test_discriminative_lrs_errors(lr, n, match):
    with pytest.raises(ValueError, match=match):
        discriminative_lrs(lr, n)


def test_current_lrs():
    sched = one_cycle_lr(1e-2, 50)
    got = current_lrs([1e-3, sched], 15)
    assert got[0] == pytest.approx(1e-3)
    assert got[1] == pytest.approx(float(sched(15)))
    assert all(isinstance(v, float) for v in got)


# ----------------------------------------------------------------------------- model helpers


class Block(nn.Module):
    """Dense -> BatchNorm -> relu; the norm's name carries no 'bn' hint on purpose."""

    features: int

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Dense(self.features)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="norm")(x)
        return nn.relu(x)


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = Block(8, name="block0")(x, train)
        x = Block(8, name="block1")(x, train)
        x = nn.Dense(8, name="bn_like_dense")(x)  # a Dense whose name looks like a BN
        return nn.Dense(1, name="head")(x)


GROUP_OF = {"block0": 0, "block1": 1, "bn_like_dense": 2, "head": 2}


def _group_of_path(path):
    return GROUP_OF[path[0]]


@functools.lru_cache(maxsize=None)
def _setup():
    """Params, batch stats, 3-group labels and a jitted grad function (built once; no test
    mutates them, as every update returns new trees)."""
    model = Net()
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 4))
    y = jax.random.normal(jax.random.PRNGKey(2), (16, 1))
    variables = model.init(jax.random.PRNGKey(0), x)
    params, batch_stats = variables["params"], variables["batch_stats"]
    labels = label_layer_groups(params, _group_of_path, 3)

    def loss_fn(p, bs):
        out, _ = model.apply({"params": p, "batch_stats": bs}, x, mutable=["batch_stats"])
        return jnp.mean((out - y) ** 2)

    grad_fn = jax.jit(jax.grad(loss_fn))
    return params, batch_stats, labels, grad_fn


def _run(tx, params, batch_stats, grad_fn, n_steps):
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        g = grad_fn(p, batch_stats)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    for _ in range(n_steps):
        params, state = step(params, state)
    return params


def _leaves(tree):
    return {"/".join(str(k.key) for k in kp): v for kp, v in jax.tree_util.tree_leaves_with_path(tree)}


# ----------------------------------------------------------------------------- labels and masks


def test_label_layer_groups_and_masks():
    params, batch_stats, labels, _ = _setup()
    lab = _leaves(labels)
    assert lab["block0/Dense_0/kernel"] == 0 and lab["block1/norm/scale"] == 1 and lab["head/bias"] == 2
    bn = _leaves(batchnorm_mask(params, batch_stats))
    assert {k for k, v in bn.items() if v} == {f"block{i}/norm/{n}" for i in (0, 1) for n in ("scale", "bias")}
    nd = _leaves(no_decay_mask(params, batch_stats))
    assert {k for k, v in nd.items() if v} == {k for k in nd if k.endswith("bias") or "/norm/" in k}
    assert not any(jax.tree_util.tree_leaves(batchnorm_mask(params, {})))


def test_label_layer_groups_errors():
    params, *_ = _setup()
    partial = {"block0": 0, "block1": 1, "head": 2}
    with pytest.raises(ValueError, match="no layer group for param bn_like_dense/"):
        label_layer_groups(params, lambda p: partial[p[0]], 3)
    with pytest.raises(ValueError, match="head/bias"):
        label_layer_groups(params, lambda p: 5 if p[0] == "head" else GROUP_OF[p[0]], 3)
    with pytest.raises(ValueError, match=r"\[3\]"):
        label_layer_groups(params, _group_of_path, 4)


# ----------------------------------------------------------------------------- optimizer


@pytest.mark.parametrize("train_bn", [True, False])
def test_frozen_groups_and_train_bn(train_bn):
    params, batch_stats, labels, grad_fn = _setup()
    tx = make_optimizer(params, batch_stats, labels, lrs=[1e-2] * 3, n_frozen_groups=2, train_bn=train_bn)
    new = _leaves(_run(tx, params, batch_stats, grad_fn, 3))
    old = _leaves(params)
    group = _leaves(labels)
    for name in old:
        moved = not np.array_equal(np.asarray(new[name]), np.asarray(old[name]))
        if group[name] == 2:
            assert moved, name
        elif "/norm/" in name:
            assert moved == train_bn, name
        else:
            assert not moved, name


def test_per_group_lrs_sgd():
    params, batch_stats, labels, grad_fn = _setup()
    lrs = [0.1, 0.01, 0.001]
    tx = make_optimizer(params, batch_stats, labels, lrs=lrs, opt="sgd", moms=0.0, wd=0.0)
    grads = grad_fn(params, batch_stats)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    g, u, p0, p1, lab = map(_leaves, (grads, updates, params, new, labels))
    for name in g:
        np.testing.assert_allclose(u[name], -lrs[lab[name]] * g[name], rtol=1e-6, atol=1e-12)
        # The applied step, up to float32 rounding of the new param values.
        ulp = float(np.abs(p0[name]).max()) * np.finfo(np.float32).eps
        np.testing.assert_allclose(p1[name] - p0[name], -lrs[lab[name]] * g[name], rtol=1e-5, atol=2 * ulp)


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_decoupled_weight_decay(opt):
    params, batch_stats, labels, _ = _setup()
    lr, wd = 0.1, 0.2
    tx = make_optimizer(params, batch_stats, labels, lrs=[lr] * 3, opt=opt, wd=wd)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    new = _leaves(optax.apply_updates(params, tx.update(zeros, tx.init(params), params)[0]))
    old = _leaves(params)
    for name, w in old.items():
        if name.endswith("bias") or "/norm/" in name:
            np.testing.assert_array_equal(new[name], w)
        else:
            np.testing.assert_allclose(new[name], w - lr * wd * w, rtol=1e-6, atol=1e-7)


def test_adam_matches_optax_adamw():
    """One group, constant betas: the same numbers as optax.adamw with the no-decay mask."""
    params, batch_stats, _, grad_fn = _setup()
    labels = jax.tree_util.tree_map(lambda _: 0, params)
    tx = make_optimizer(params, batch_stats, labels, lrs=[3e-3], wd=0.1)
    decay = jax.tree_util.tree_map(lambda m: not m, no_decay_mask(params, batch_stats))
    ref = optax.adamw(3e-3, b1=0.9, b2=0.99, eps=1e-5, weight_decay=0.1, mask=decay)
    a, b = _run(tx, params, batch_stats, grad_fn, 3), _run(ref, params, batch_stats, grad_fn, 3)
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-8), a, b)


def test_scheduled_momentum_adam():
    """b1 from a schedule is evaluated per step (torch semantics: bias correction with the
    current beta1), checked against numpy Adam on a single weight."""
    total, lr = 10, 0.05
    moms = one_cycle_momentum(total)
    params = {"w": jnp.array([1.0, -2.0])}
    labels = {"w": 0}
    tx = make_optimizer(params, {}, labels, lrs=[lr], moms=moms, wd=0.0)
    state = tx.init(params)
    grads = [np.array([0.5, -1.0]), np.array([-0.3, 2.0]), np.array([1.0, 0.1])]
    p, m, v = np.array([1.0, -2.0]), np.zeros(2), np.zeros(2)
    b1s = _ref_moms(total)
    for t, g in enumerate(grads, start=1):
        b1, b2 = b1s[t - 1], 0.99
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + 1e-5)
        u, state = jax.jit(tx.update)({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = optax.apply_updates(params, u)
    np.testing.assert_allclose(params["w"], p, rtol=1e-5)


def test_one_cycle_training_runs_jitted():
    params, batch_stats, labels, grad_fn = _setup()
    total = 6
    lrs = [one_cycle_lr(lr, total) for lr in discriminative_lrs(slice(1e-4, 1e-2), 3)]
    tx = make_optimizer(params, batch_stats, labels, lrs=lrs, moms=one_cycle_momentum(total), clip_norm=1.0)
    new = _run(tx, params, batch_stats, grad_fn, total)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(new))
    assert current_lrs(lrs, 0) == pytest.approx([1e-4 / 25, 1e-3 / 25, 1e-2 / 25], rel=1e-5)


@pytest.mark.parametrize("n_frozen", [0, 2])
def test_clip_norm(n_frozen):
    params, batch_stats, labels, _ = _setup()
    clip = 0.1
    big = jax.tree_util.tree_map(lambda w: jnp.full_like(w, 10.0), params)
    tx = make_optimizer(
        params, batch_stats, labels, lrs=[1.0] * 3, opt="sgd", moms=0.0, wd=0.0, n_frozen_groups=n_frozen, clip_norm=clip
    )
    updates, _ = tx.update(big, tx.init(params), params)
    # Only trainable grads count toward the norm (fastai clips trainable params only).
    assert float(optax.tree.norm(updates)) == pytest.approx(clip, rel=1e-5)
    unclipped = make_optimizer(params, batch_stats, labels, lrs=[1.0] * 3, opt="sgd", moms=0.0, wd=0.0)
    assert float(optax.tree.norm(unclipped.update(big, unclipped.init(params), params)[0])) > 10 * clip


def test_make_optimizer_errors():
    params, batch_stats, labels, _ = _setup()
    with pytest.raises(ValueError, match="opt"):
        make_optimizer(params, batch_stats, labels, lrs=[1e-3] * 3, opt="rmsprop")
    with pytest.raises(ValueError, match="bn_like_dense/.* has no lr"):
        make_optimizer(params, batch_stats, labels, lrs=[1e-3] * 2)
    with pytest.raises(ValueError, match="n_frozen_groups"):
        make_optimizer(params, batch_stats, labels, lrs=[1e-3] * 3, n_frozen_groups=4)
