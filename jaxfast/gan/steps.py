"""Pure GAN train steps (fastai v1's GANLearner, lesson 7) on two jaxfast TrainStates.

    critic_step(gen_state, critic_state, batch, rng, loss)    -> (critic_state, metrics)
    generator_step(gen_state, critic_state, batch, rng, loss) -> (gen_state, metrics)

Each state has its own Optax optimizer; only the trained one changes. `loss` (a `GANLoss`,
static) picks the objective; jit once with it bound (`jit_gan_steps`). A batch is a dict with
'targets' (real images), optional 'inputs' (the generator's input: fastai's noise or
low-resolution images; drawn as N(0, 1) noise [B, 1, 1, noise_size] from `rng` when absent)
and optional 'mask' ([B], 1 for real rows). Metrics are sums and counts ({'loss': {'sum',
'count'}, ...}); the loss is the one of the forward pass, before the update (fastai's
`last_loss`, which the switchers read).

Objectives (critic scores s = the critic's output averaged over its n outputs per example):
- 'gan', fastai's `gan_loss_from_func` with BCE-with-logits (`AdaptiveLoss`): critic
  (BCE(real, 1) + BCE(fake, 0)) / 2 (+ `accuracy_thresh_expand`, 0.5 on sigmoids); generator
  w0 * BCE(fake, 1) + w1 * content(fake, targets), `content_loss` any per-example
  `(preds, targets) -> [B]` (MSE, or a feature loss), weights (1, 50) in the superres lesson.
- 'wgan': critic mean(s_fake) - mean(s_real), generator -mean(s_fake), and every critic
  param clipped to [-clip, clip] (0.01) before the critic is used and after each critic update
  (fastai clamps at every batch's start). fastai's WassersteinLoss is the mirror image (critic
  real - fake, generator +fake): the critic's sign is a convention, the estimate the same.
- 'wgan_gp' (Gulrajani et al. 2017): 'wgan' without clipping, plus gp_lambda * mean((||grad_x
  s(x_hat)|| - 1)^2) on x_hat = eps * real + (1 - eps) * fake, eps ~ U[0, 1] per example.

The critic sees real and fake images in two separate forward passes (its BatchNorm statistics
and spectral-norm vectors updated by each, as in PyTorch). The model that is not trained runs in
inference mode when `switch_eval` (fastai's default; the WGAN lesson passes False: then it runs
in training mode, batch statistics and dropout, but its running statistics are not written back:
they only matter at inference).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxfast.errors import InputError
from jaxfast.losses import binary_cross_entropy
from jaxfast.state import TrainState

PerExampleLoss = Callable[[jax.Array, jax.Array], jax.Array]
KINDS = ("gan", "wgan", "wgan_gp")


@dataclasses.dataclass(frozen=True)
class GANLoss:
    """What the two steps optimise (static: part of the jit cache key)."""

    kind: str = "gan"
    content_loss: PerExampleLoss | None = None
    weights_gen: tuple[float, float] = (1.0, 1.0)
    clip: float | None = None
    gp_lambda: float = 10.0
    switch_eval: bool = True
    noise_size: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InputError(f"GANLoss: kind must be one of {KINDS}, got {self.kind!r}")
        if self.clip is not None and not self.clip > 0:
            raise InputError(f"GANLoss: clip must be positive or None, got {self.clip!r}")
        if self.kind == "gan" and self.content_loss is None and self.weights_gen[1] != 0:
            raise InputError("GANLoss: kind 'gan' with a content weight needs a content_loss (preds, targets) -> [B]")


def gan_loss(content_loss: PerExampleLoss | None, weights_gen=(1.0, 50.0), switch_eval: bool = True,
             noise_size: int | None = None) -> GANLoss:
    """fastai's `GANLearner.from_learners(..., weights_gen)` objective (superres GAN: (1, 50))."""
    return GANLoss("gan", content_loss, (float(weights_gen[0]), float(weights_gen[1])), None, 10.0, switch_eval,
                   noise_size)


def wgan_loss(clip: float = 0.01, switch_eval: bool = False, noise_size: int | None = 100) -> GANLoss:
    """fastai's `GANLearner.wgan(clip=0.01)` as the WGAN lesson runs it (switch_eval=False)."""
    return GANLoss("wgan", clip=clip, switch_eval=switch_eval, noise_size=noise_size)


def wgan_gp_loss(gp_lambda: float = 10.0, switch_eval: bool = False, noise_size: int | None = 100) -> GANLoss:
    """WGAN with gradient penalty (no clipping)."""
    return GANLoss("wgan_gp", gp_lambda=gp_lambda, switch_eval=switch_eval, noise_size=noise_size)


def clip_params(params, clip: float | None):
    """Every leaf clamped to [-clip, clip] (WGAN's weight clipping); unchanged when clip is None."""
    return params if clip is None else jax.tree.map(lambda p: jnp.clip(p, -clip, clip), params)


def _cast_floats(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def apply_model(state: TrainState, params, batch_stats, inputs, *, train: bool, rng):
    """(float32 outputs, batch_stats after the call) in the state's compute dtype; with train,
    dropout draws from `rng` and BatchNorm / spectral-norm statistics update."""
    dtype = jnp.dtype(state.task.compute_dtype)
    if dtype != jnp.float32:
        params, inputs = _cast_floats(params, dtype), _cast_floats(inputs, dtype)
    variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
    if train and batch_stats:
        out, updates = state.apply_fn(variables, inputs, train=True, rngs={"dropout": rng}, mutable=["batch_stats"])
        return _cast_floats(out, jnp.float32), updates["batch_stats"]
    out = state.apply_fn(variables, inputs, train=train, rngs={"dropout": rng} if train else {})
    return _cast_floats(out, jnp.float32), batch_stats


def scores(critic_outputs: jax.Array) -> jax.Array:
    """One score per example: the critic's outputs [B, ...] averaged over the non-batch axes."""
    return critic_outputs.reshape(critic_outputs.shape[0], -1).mean(axis=1)


def gradient_penalty(score_fn: Callable[[jax.Array], jax.Array], real: jax.Array, fake: jax.Array,
                     eps: jax.Array) -> jax.Array:
    """Per-example (||d score / d x_hat|| - 1)^2 at x_hat = eps * real + (1 - eps) * fake; eps [B].
    `score_fn` maps images [B, ...] to scores [B]; the gradient of their sum gives each example's
    own gradient (exact when examples do not interact, i.e. without train-mode BatchNorm)."""
    eps = eps.reshape((-1,) + (1,) * (real.ndim - 1))
    x_hat = eps * real + (1.0 - eps) * fake
    grads = jax.grad(lambda x: score_fn(x).sum())(x_hat)
    norms = jnp.sqrt(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=1) + 1e-12)
    return jnp.square(norms - 1.0)


def _batch_parts(batch: dict, loss: GANLoss, rng) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(generator inputs, real targets, float mask) of a batch; noise drawn from rng if no inputs."""
    targets = batch["targets"]
    n = targets.shape[0]
    if "inputs" in batch:
        inputs = batch["inputs"]
    elif loss.noise_size is not None:
        inputs = jax.random.normal(rng, (n, 1, 1, loss.noise_size), jnp.float32)
    else:
        raise InputError("GAN batch has no 'inputs' and the GANLoss has no noise_size to draw noise from")
    mask = batch.get("mask")
    mask = jnp.ones((n,), jnp.float32) if mask is None else mask.astype(jnp.float32)
    return inputs, targets, mask


def _stat(values: jax.Array, mask: jax.Array) -> dict:
    return {"sum": (values * mask).sum(), "count": mask.sum()}


def critic_step(gen_state: TrainState, critic_state: TrainState, batch: dict, rng: jax.Array,
                loss: GANLoss) -> tuple[TrainState, dict]:
    """One optimizer step of the critic on real `targets` against the generator's fakes."""
    noise_key, gen_key, real_key, fake_key, gp_key, eps_key = jax.random.split(rng, 6)
    inputs, real, mask = _batch_parts(batch, loss, noise_key)
    count = jnp.maximum(mask.sum(), 1.0)
    fake, _ = apply_model(gen_state, gen_state.params, gen_state.batch_stats, inputs, train=not loss.switch_eval,
                          rng=gen_key)
    fake = jax.lax.stop_gradient(fake)
    params = clip_params(critic_state.params, loss.clip)

    def loss_fn(params):
        real_out, stats = apply_model(critic_state, params, critic_state.batch_stats, real, train=True, rng=real_key)
        fake_out, stats = apply_model(critic_state, params, stats, fake, train=True, rng=fake_key)
        metrics = {}
        if loss.kind == "gan":
            per_example = (binary_cross_entropy(real_out, jnp.ones_like(real_out))
                           + binary_cross_entropy(fake_out, jnp.zeros_like(fake_out))) / 2
            correct = jnp.concatenate([(jax.nn.sigmoid(real_out) > 0.5).mean(axis=tuple(range(1, real_out.ndim))),
                                       (jax.nn.sigmoid(fake_out) <= 0.5).mean(axis=tuple(range(1, fake_out.ndim)))])
            metrics["accuracy"] = _stat(correct, jnp.concatenate([mask, mask]))
        else:
            estimate = scores(real_out) - scores(fake_out)
            per_example = -estimate
            metrics["wasserstein"] = _stat(estimate, mask)
            if loss.kind == "wgan_gp":
                def score_fn(x):
                    return scores(apply_model(critic_state, params, stats, x, train=True, rng=gp_key)[0])

                eps = jax.random.uniform(eps_key, (real.shape[0],))
                penalty = gradient_penalty(score_fn, real.astype(jnp.float32), fake, eps)
                per_example = per_example + loss.gp_lambda * penalty
                metrics["gradient_penalty"] = _stat(penalty, mask)
        metrics["loss"] = _stat(per_example, mask)
        return (per_example * mask).sum() / count, (stats, metrics)

    grads, (stats, metrics) = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt_state = critic_state.tx.update(grads, critic_state.opt_state, params)
    new_params = clip_params(optax.apply_updates(params, updates), loss.clip)
    new_state = critic_state.replace(step=critic_state.step + 1, params=new_params, batch_stats=stats,
                                     opt_state=opt_state)
    return new_state, metrics


def generator_step(gen_state: TrainState, critic_state: TrainState, batch: dict, rng: jax.Array,
                   loss: GANLoss) -> tuple[TrainState, dict]:
    """One optimizer step of the generator: fool the critic (plus the content loss for 'gan')."""
    noise_key, gen_key, critic_key = jax.random.split(rng, 3)
    inputs, targets, mask = _batch_parts(batch, loss, noise_key)
    count = jnp.maximum(mask.sum(), 1.0)
    critic_params = jax.lax.stop_gradient(clip_params(critic_state.params, loss.clip))

    def loss_fn(params):
        fake, stats = apply_model(gen_state, params, gen_state.batch_stats, inputs, train=True, rng=gen_key)
        fake_out, _ = apply_model(critic_state, critic_params, critic_state.batch_stats, fake,
                                  train=not loss.switch_eval, rng=critic_key)
        metrics = {}
        if loss.kind == "gan":
            adversarial = binary_cross_entropy(fake_out, jnp.ones_like(fake_out))
            w_adv, w_content = loss.weights_gen
            per_example = w_adv * adversarial
            metrics["adversarial"] = _stat(adversarial, mask)
            if loss.content_loss is not None and w_content != 0:
                content = loss.content_loss(fake, targets)
                if content.shape != mask.shape:
                    raise InputError(f"GAN content loss must return one value per example {mask.shape}, "
                                     f"got {content.shape}")
                per_example = per_example + w_content * content
                metrics["content"] = _stat(content, mask)
        else:
            per_example = -scores(fake_out)
        metrics["loss"] = _stat(per_example, mask)
        return (per_example * mask).sum() / count, (stats, metrics)

    grads, (stats, metrics) = jax.grad(loss_fn, has_aux=True)(gen_state.params)
    updates, opt_state = gen_state.tx.update(grads, gen_state.opt_state, gen_state.params)
    new_state = gen_state.replace(step=gen_state.step + 1, params=optax.apply_updates(gen_state.params, updates),
                                  batch_stats=stats, opt_state=opt_state)
    return new_state, metrics


class GANSteps(NamedTuple):
    """The two jitted steps for one `GANLoss`: `critic(gen, critic, batch, rng)`, `generator(...)`."""

    critic: Callable
    generator: Callable
    loss: GANLoss


def _jit_steps(loss: GANLoss, donate: bool, out_shardings=None) -> GANSteps:
    sharding = {} if out_shardings is None else {"out_shardings": out_shardings}
    critic = jax.jit(functools.partial(critic_step, loss=loss), donate_argnums=(1,) if donate else (), **sharding)
    generator = jax.jit(functools.partial(generator_step, loss=loss), donate_argnums=(0,) if donate else (), **sharding)
    return GANSteps(critic, generator, loss)


_cached_jit_steps = functools.lru_cache(maxsize=16)(_jit_steps)


def jit_gan_steps(loss: GANLoss, donate: bool = True, out_shardings=None) -> GANSteps:
    """`critic_step` and `generator_step` jitted once with `loss` bound (the same objects for an
    equal `loss`, so a second run in one process reuses the compiled steps; a loss whose content
    loss cannot be hashed gets its own); with `donate` the trained state's buffers are reused for
    its successor (do not read a state after passing it in). `out_shardings`: the outputs'
    sharding on a mesh (jaxfast.parallel's `Runner.replicated`; GANTrainer sets it)."""
    try:
        return _cached_jit_steps(loss, donate, out_shardings)
    except TypeError:  # unhashable content_loss
        return _jit_steps(loss, donate, out_shardings)
