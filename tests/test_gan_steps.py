"""Pure GAN steps and switchers: fastai's GAN loss, WGAN with clipping, WGAN-GP's penalty,
switcher sequences, a WGAN that learns a toy distribution, determinism and exact resume."""

import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfast.checkpoint import Checkpointer
from jaxfast.errors import InputError
from jaxfast.gan.steps import (GANLoss, critic_step, gan_loss, generator_step, gradient_penalty, jit_gan_steps,
                               wgan_gp_loss, wgan_loss)
from jaxfast.gan.switcher import AdaptiveSwitcher, FixedSwitcher, SwitchState, fit_gan, initial_switch_state
from jaxfast.losses import binary_cross_entropy, mse
from jaxfast.models.gan import basic_critic, basic_generator
from jaxfast.state import Task, copy_tree, create_train_state


class LinearCritic(nn.Module):
    """score = w . flatten(x) + b -> [B, 1]; its input gradient is w everywhere."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(1)(x.reshape(x.shape[0], -1))


class LinearGenerator(nn.Module):
    """noise [B, 4] -> images [B, 2, 2, 1]."""

    @nn.compact
    def __call__(self, z, train: bool = False):
        return nn.Dense(4)(z.reshape(z.shape[0], -1)).reshape(z.shape[0], 2, 2, 1)


def linear_states(lr=0.1):
    gen = create_train_state(LinearGenerator(), jnp.zeros((3, 4)), optax.sgd(lr), Task(mse), seed=0)
    critic = create_train_state(LinearCritic(), jnp.zeros((3, 2, 2, 1)), optax.sgd(lr), Task(binary_cross_entropy),
                                seed=1)
    return gen, critic


def linear_batch(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"inputs": rng.standard_normal((n, 4)).astype(np.float32),
            "targets": rng.standard_normal((n, 2, 2, 1)).astype(np.float32)}


def score(params, x):
    return x.reshape(x.shape[0], -1) @ params["Dense_0"]["kernel"][:, 0] + params["Dense_0"]["bias"][0]


def generate(params, z):
    return (z @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]).reshape(-1, 2, 2, 1)


def test_gan_critic_step_is_fastais_bce_loss_and_accuracy_with_padding_ignored():
    gen, critic = linear_states()
    batch = linear_batch()
    loss = gan_loss(mse)
    new_critic, metrics = critic_step(gen, critic, batch, jax.random.key(0), loss)
    fake = generate(gen.params, batch["inputs"])

    def expected_loss(params):
        real_s, fake_s = score(params, batch["targets"]), score(params, fake)
        return jnp.mean((jax.nn.softplus(-real_s) + jax.nn.softplus(fake_s)) / 2)

    assert metrics["loss"]["count"] == 3
    np.testing.assert_allclose(metrics["loss"]["sum"] / 3, expected_loss(critic.params), rtol=1e-6)
    real_s, fake_s = score(critic.params, batch["targets"]), score(critic.params, fake)
    correct = np.sum(np.asarray(real_s) > 0) + np.sum(np.asarray(fake_s) <= 0)
    assert metrics["accuracy"]["sum"] == correct and metrics["accuracy"]["count"] == 6
    grads = jax.grad(expected_loss)(critic.params)
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, critic.params, grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), new_critic.params, expected)
    assert int(new_critic.step) == 1 and int(gen.step) == 0
    # a padded row (mask 0) changes nothing
    padded = {k: np.concatenate([v, 100 + v[:1]]) for k, v in batch.items()}
    padded["mask"] = np.array([1, 1, 1, 0], np.float32)
    padded_critic, padded_metrics = critic_step(gen, critic, padded, jax.random.key(0), loss)
    np.testing.assert_allclose(padded_metrics["loss"]["sum"], metrics["loss"]["sum"], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 padded_critic.params, new_critic.params)


def test_gan_generator_step_weights_adversarial_and_content_losses():
    gen, critic = linear_states()
    batch = linear_batch(seed=1)
    new_gen, metrics = generator_step(gen, critic, batch, jax.random.key(0), gan_loss(mse, weights_gen=(1.0, 50.0)))

    def expected_loss(params):
        fake = generate(params, batch["inputs"])
        adversarial = jax.nn.softplus(-score(critic.params, fake))
        content = jnp.mean(jnp.square(fake - batch["targets"]).reshape(3, -1), axis=1)
        return jnp.mean(adversarial + 50 * content), adversarial, content

    total, adversarial, content = expected_loss(gen.params)
    np.testing.assert_allclose(metrics["loss"]["sum"] / 3, total, rtol=1e-5)
    np.testing.assert_allclose(metrics["adversarial"]["sum"], adversarial.sum(), rtol=1e-5)
    np.testing.assert_allclose(metrics["content"]["sum"], content.sum(), rtol=1e-5)
    grads = jax.grad(lambda p: expected_loss(p)[0])(gen.params)
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, gen.params, grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_gen.params, expected)
    with pytest.raises(InputError, match="needs a content_loss"):
        GANLoss("gan", weights_gen=(1.0, 50.0))
    with pytest.raises(InputError, match="one value per example"):
        generator_step(gen, critic, batch, jax.random.key(0), gan_loss(lambda p, t: jnp.mean((p - t) ** 2)))


def test_wgan_critic_clips_every_param_and_uses_clipped_weights():
    gen, critic = linear_states(lr=1.0)
    batch = linear_batch(seed=2)
    batch.pop("inputs")
    big = jax.tree.map(lambda p: p + 0.5, critic.params)  # outside [-0.01, 0.01]
    critic = critic.replace(params=big)
    loss = wgan_loss(clip=0.01, noise_size=4)
    new_critic, metrics = critic_step(gen, critic, batch, jax.random.key(3), loss)
    assert all(float(jnp.abs(p).max()) <= 0.01 for p in jax.tree.leaves(new_critic.params))
    # the forward used the clipped critic: loss = mean(fake) - mean(real) with clipped weights
    clipped = jax.tree.map(lambda p: jnp.clip(p, -0.01, 0.01), big)
    noise = jax.random.normal(jax.random.split(jax.random.key(3), 6)[0], (3, 1, 1, 4))
    fake = generate(gen.params, noise.reshape(3, 4))
    estimate = score(clipped, batch["targets"]) - score(clipped, fake)
    np.testing.assert_allclose(metrics["wasserstein"]["sum"], estimate.sum(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics["loss"]["sum"], -estimate.sum(), rtol=1e-5, atol=1e-7)
    _, gen_metrics = generator_step(gen, critic, batch, jax.random.key(4), loss)  # the generator sees it clipped too
    gen_noise = jax.random.normal(jax.random.split(jax.random.key(4), 3)[0], (3, 1, 1, 4))
    gen_fake = generate(gen.params, gen_noise.reshape(3, 4))
    np.testing.assert_allclose(gen_metrics["loss"]["sum"], -score(clipped, gen_fake).sum(), rtol=1e-5, atol=1e-7)
    with pytest.raises(InputError, match="no 'inputs' and the GANLoss has no noise_size"):
        critic_step(gen, critic, batch, jax.random.key(3), wgan_loss(noise_size=None))


def test_gradient_penalty_on_a_linear_critic_is_lambda_times_norm_minus_one_squared():
    gen, critic = linear_states()
    w = np.array([0.5, -1.0, 2.0, 0.25], np.float32)
    params = {"Dense_0": {"kernel": jnp.asarray(w)[:, None], "bias": jnp.array([0.3])}}
    critic = critic.replace(params=params)
    batch = linear_batch(seed=3)
    real, fake = jnp.asarray(batch["targets"]), generate(gen.params, batch["inputs"])
    expected_penalty = (np.linalg.norm(w) - 1) ** 2  # the gradient is w at every interpolate
    penalty = gradient_penalty(lambda x: score(params, x), real, fake, jnp.array([0.0, 0.3, 1.0]))
    np.testing.assert_allclose(penalty, [expected_penalty] * 3, rtol=1e-5)
    _, metrics = critic_step(gen, critic, batch, jax.random.key(0), wgan_gp_loss(gp_lambda=10.0))
    np.testing.assert_allclose(metrics["gradient_penalty"]["sum"] / 3, expected_penalty, rtol=1e-5)
    wasserstein = float(jnp.mean(score(params, real) - score(params, fake)))
    np.testing.assert_allclose(metrics["loss"]["sum"] / 3, -wasserstein + 10 * expected_penalty, rtol=1e-5)
    # a unit-norm critic pays nothing
    unit = {"Dense_0": {"kernel": jnp.asarray(w / np.linalg.norm(w))[:, None], "bias": jnp.array([0.0])}}
    np.testing.assert_allclose(gradient_penalty(lambda x: score(unit, x), real, fake, jnp.full((3,), 0.5)), 0,
                               atol=1e-6)


def run_switcher(switcher, losses, gen_first=False):
    """The model each step trains ('C'/'G') when step k's loss is losses[k]."""
    state, trained = initial_switch_state(gen_first), []
    for loss in losses:
        trained.append("G" if state.gen_mode else "C")
        state, train_critic = switcher(state, {"loss": {"sum": loss, "count": 1.0}})
        assert train_critic == (not state.gen_mode)
    return "".join(trained), state


def test_fixed_switcher_sequence():
    assert run_switcher(FixedSwitcher(5, 1), [0.0] * 13)[0] == "CCCCCGCCCCCGC"
    trained, state = run_switcher(FixedSwitcher(2, 3), [0.0] * 9, gen_first=True)
    assert trained == "GGGCCGGGC" and state == SwitchState(gen_mode=False, n_crit=1, n_gen=0)
    with pytest.raises(InputError, match="n_crit must be a positive int"):
        FixedSwitcher(0, 1)


def test_adaptive_switcher_follows_fastai():
    # critic_thresh 0.65 (the superres lesson): the critic trains until its loss < 0.65, then one generator step
    losses = [0.9, 0.7, 0.6, 5.0, 0.8, 0.64, 4.0, 0.2, 3.0]
    trained, state = run_switcher(AdaptiveSwitcher(critic_thresh=0.65), losses)
    assert trained == "CCCGCCGCG" and state.gen_mode is False
    # with a generator threshold the generator also stays until its loss falls below it
    trained, _ = run_switcher(AdaptiveSwitcher(critic_thresh=0.65, gen_thresh=2.0), [0.5, 3.0, 2.5, 1.0, 0.7, 0.1])
    assert trained == "CGGGCC"
    assert run_switcher(AdaptiveSwitcher(), [1.0] * 4)[0] == "CGCG"  # no thresholds: alternate
    assert SwitchState.from_json(state.to_json()) == state
    with pytest.raises(InputError, match="bad GAN switch state"):
        SwitchState.from_json({"gen_mode": True})


TOY_NOISE, TOY_BS = 16, 32


@functools.lru_cache(maxsize=1)
def _toy_initial_states():
    tx = optax.adam(1e-3, b1=0.0, b2=0.99)  # the WGAN lesson's Adam betas
    gen = create_train_state(basic_generator(8, 1, TOY_NOISE, 16), jnp.zeros((TOY_BS, 1, 1, TOY_NOISE)), tx,
                             Task(mse), seed=0)
    critic = create_train_state(basic_critic(8, 1, 16), jnp.zeros((TOY_BS, 8, 8, 1)), tx, Task(binary_cross_entropy),
                                seed=1)
    return gen, critic


def toy_states():
    """Fresh copies of the same initial states (the steps donate their inputs; one set of static
    fields, so the jitted steps compile once)."""
    return copy_tree(_toy_initial_states())


def toy_batch(i):
    """Step i's real images: a bright cross on a dark 8x8 background, plus noise."""
    pattern = -np.ones((8, 8, 1), np.float32)
    pattern[3:5], pattern[:, 3:5] = 1, 1
    noise = np.random.default_rng(i).standard_normal((TOY_BS, 8, 8, 1)).astype(np.float32)
    return {"targets": np.clip(pattern + 0.1 * noise, -1, 1)}


def toy_batches(start=0):
    i = start
    while True:
        yield toy_batch(i)
        i += 1


@pytest.fixture(scope="module")
def wgan_steps():
    return jit_gan_steps(wgan_loss(clip=0.01, noise_size=TOY_NOISE))


def test_wgan_learns_a_toy_distribution(wgan_steps):
    gen, critic = toy_states()
    t0 = time.perf_counter()
    estimates, n_gen = [], 0
    for record in fit_gan(gen, critic, initial_switch_state(), toy_batches(), jax.random.key(0), wgan_steps,
                          FixedSwitcher(5, 1)):
        if record.iteration == 5:  # both steps compiled: time the training from here
            t0 = time.perf_counter()
        if record.trained_critic:
            estimates.append(record.metrics["wasserstein"])
        else:
            n_gen += 1
        assert all(np.isfinite(v) for v in record.metrics.values())
        if n_gen == 200:
            break
    seconds = time.perf_counter() - t0
    windows = np.asarray(estimates).reshape(-1, 50).mean(axis=1)  # 1,000 critic steps in windows of 50
    # the critic first learns to tell them apart, then the generator closes the gap: measured
    # here, peak 0.080 (steps 50-100), last window 0.009
    assert windows.max() > 0.02
    assert windows[-1] < 0.3 * windows.max(), windows.round(4)
    assert seconds < 30, f"200 generator + 1000 critic steps took {seconds:.1f} s (compiles excluded)"


def run_toy(steps, n, switch_state=None, gen=None, critic=None, start=0):
    if gen is None:
        gen, critic = toy_states()
    switch_state = switch_state or initial_switch_state()
    record = None
    for record in fit_gan(gen, critic, switch_state, toy_batches(start), jax.random.key(7), steps,
                          FixedSwitcher(2, 1), n_steps=n):
        pass
    return record


def test_gan_steps_are_deterministic_and_resume_exactly(wgan_steps, tmp_path):
    first = run_toy(wgan_steps, 14)
    second = run_toy(wgan_steps, 14)
    jax.tree.map(np.testing.assert_array_equal, (first.gen_state.params, first.critic_state.params),
                 (second.gen_state.params, second.critic_state.params))
    assert first.iteration == 13 and int(first.gen_state.step) + int(first.critic_state.step) == 14

    # stop after 7 steps (mid-cycle: 2 critic steps, 1 generator step), save, restore into fresh states
    part = run_toy(wgan_steps, 7)
    assert part.switch_state == SwitchState(gen_mode=False, n_crit=1, n_gen=0)
    gen_ckpt, critic_ckpt = Checkpointer(tmp_path / "gen"), Checkpointer(tmp_path / "critic")
    gen_ckpt.save(part.gen_state, {"switch": part.switch_state.to_json()})
    critic_ckpt.save(part.critic_state, {})
    fresh_gen, fresh_critic = toy_states()
    gen_state, meta = gen_ckpt.restore(fresh_gen)
    critic_state, _ = critic_ckpt.restore(fresh_critic)
    resumed = run_toy(wgan_steps, 7, SwitchState.from_json(meta["switch"]), gen_state, critic_state, start=7)
    assert resumed.iteration == 13 and resumed.switch_state == first.switch_state
    jax.tree.map(np.testing.assert_array_equal,
                 (first.gen_state.params, first.gen_state.batch_stats, first.critic_state.params,
                  first.critic_state.opt_state),
                 (resumed.gen_state.params, resumed.gen_state.batch_stats, resumed.critic_state.params,
                  resumed.critic_state.opt_state))
