"""Pure train/eval/predict steps: `(state, batch) -> (state, metrics)`.

A batch is a dict: `inputs` (any pytree the model takes), `targets`, and `mask`
(float [B], 1 for real rows and 0 for padding). Metrics come back as sums and
counts, so padded batches and several devices add up exactly.

The same functions run on one device under `jit`, under `jit` with a sharded
batch (XLA inserts the collectives), and under `pmap` when `axis_name` is given
(gradients and counts are summed over the named axis, BatchNorm statistics
averaged). See `jaxfast.parallel` for where that choice is made.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxfast.losses import activation_penalty
from jaxfast.metrics import accumulate_all
from jaxfast.state import TrainState, apply_model


def _cast_floats(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _step_rng(state: TrainState, axis_name: str | None) -> jax.Array:
    """Per-step dropout key: fold_in(base, step), so a resumed run draws the same keys."""
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    if axis_name is not None:
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    return rng


def _forward(state: TrainState, params, inputs, *, train: bool, rng=None, intermediates: bool = False,
             keep_carry: bool = False):
    """Run the model; returns (float32 outputs, new batch_stats, new carry), and the sown
    intermediates as a fourth item when `intermediates`.

    Training reads and writes the model's mutable collections: BatchNorm statistics and the
    carried state (e.g. an LM's hidden state, kept from batch to batch). Evaluation with
    `keep_carry` reads and returns the carried state too (the batch's reset flag starts it
    from zeros); prediction leaves the state alone and starts each batch from the zero carry."""
    dtype = jnp.dtype(state.task.compute_dtype)
    if dtype != jnp.float32:
        params = _cast_floats(params, dtype)
        inputs = _cast_floats(inputs, dtype)
    variables = {"params": params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    if (train or keep_carry) and state.carry:
        variables["carry"] = state.carry
    mutable = [name for name, tree in (("batch_stats", state.batch_stats), ("carry", state.carry)) if tree]
    if not train:  # the carry: kept by evaluation (keep_carry); prediction builds a zero one and drops it
        mutable = ["carry"] if state.carry else []
    if intermediates:
        mutable = [*mutable, "intermediates"]
    rngs = {"dropout": rng} if train else {}
    if mutable:
        outputs, updates = apply_model(state.apply_fn, variables, inputs, train=train, rngs=rngs, mutable=mutable)
    else:
        outputs, updates = apply_model(state.apply_fn, variables, inputs, train=train, rngs=rngs), {}
    new_stats = updates.get("batch_stats", state.batch_stats) if train else state.batch_stats
    new_carry = updates.get("carry", state.carry) if train or keep_carry else state.carry
    if intermediates:
        sown = _cast_floats(updates.get("intermediates", {}), jnp.float32)
        return _cast_floats(outputs, jnp.float32), new_stats, new_carry, sown
    return _cast_floats(outputs, jnp.float32), new_stats, new_carry


def _sum_over(tree, axis_name):
    return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def train_step(state: TrainState, batch: dict, axis_name: str | None = None) -> tuple[TrainState, dict]:
    """One optimizer step on `batch`; returns the new state and {'loss': {'sum', 'count'}}."""
    mask = batch["mask"].astype(jnp.float32)
    count = mask.sum()
    global_count = jnp.maximum(_sum_over(count, axis_name), 1.0)
    rng = _step_rng(state, axis_name)

    alpha, beta = state.task.activation_reg
    regularize = alpha != 0.0 or beta != 0.0

    def loss_fn(params):
        if regularize:
            outputs, new_stats, new_carry, sown = _forward(state, params, batch["inputs"], train=True, rng=rng,
                                                           intermediates=True)
        else:
            outputs, new_stats, new_carry = _forward(state, params, batch["inputs"], train=True, rng=rng)
        loss_sum = (state.task.loss(outputs, batch["targets"]) * mask).sum()
        objective = loss_sum
        if regularize:
            objective = objective + (activation_penalty(sown, alpha, beta) * mask).sum()
        # Dividing by the GLOBAL count makes summed per-device gradients equal the
        # gradient of the global mean, whatever the split.
        return objective / global_count, (loss_sum, new_stats, new_carry)

    grads, (loss_sum, new_stats, new_carry) = jax.grad(loss_fn, has_aux=True)(state.params)
    if axis_name is not None:
        grads = jax.lax.psum(grads, axis_name)
        new_stats = jax.lax.pmean(new_stats, axis_name)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=new_stats,
        opt_state=opt_state,
        carry=new_carry,
    )
    # No gradient norm here: reading every gradient would keep the weight gradients of
    # frozen layers alive, which XLA otherwise drops (1.5x faster frozen-body steps).
    metrics = {"loss": {"sum": loss_sum, "count": count}}
    if axis_name is not None:
        metrics["loss"] = _sum_over(metrics["loss"], axis_name)
    return new_state, metrics


def eval_step(state: TrainState, batch: dict, axis_name: str | None = None) -> tuple[dict, dict]:
    """Loss and metric sums on `batch` with the model in inference mode, and the carried state
    after it: evaluation carries an LM's hidden state from batch to batch as fastai's validate
    does (the loader's first batch resets it); {} for a model without one."""
    mask = batch["mask"].astype(jnp.float32)
    outputs, _, carry = _forward(state, state.params, batch["inputs"], train=False, keep_carry=True)
    loss_sum = (state.task.loss(outputs, batch["targets"]) * mask).sum()
    metrics = {"loss": {"sum": loss_sum, "count": mask.sum()}}
    metrics.update(accumulate_all(state.task.metrics, outputs, batch["targets"], mask))
    return _sum_over(metrics, axis_name), carry


def predict_step(state: TrainState, inputs) -> jax.Array:
    """Model outputs (float32) in inference mode."""
    outputs, _, _ = _forward(state, state.params, inputs, train=False)
    return outputs


def loss_and_outputs_step(state: TrainState, batch: dict) -> tuple[jax.Array, jax.Array]:
    """Per-example losses and outputs (for interpretation: top losses, confusion)."""
    outputs, _, _ = _forward(state, state.params, batch["inputs"], train=False)
    return state.task.loss(outputs, batch["targets"]), outputs
