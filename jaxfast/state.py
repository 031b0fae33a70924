"""The training state: one pytree with everything a step reads and writes.

Arrays (params, batch stats, optimizer state, step, rng) are pytree leaves, so the
state can be jitted, pmapped, sharded and checkpointed as one object. The model's
apply function, the optimizer and the task (loss, metrics, precision) are static
fields: they are part of the jit cache key, never traced.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxfast.metrics import Metric

PerExampleLoss = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Task:
    """What a step optimises and measures: a per-example loss, metrics, and precision.

    compute_dtype 'bfloat16' runs the forward/backward pass in bf16 while params,
    optimizer state and the loss stay float32 (mixed precision with fp32 master weights).
    """

    loss: PerExampleLoss
    metrics: tuple[Metric, ...] = ()
    compute_dtype: str = "float32"
    activation_reg: tuple[float, float] = (0.0, 0.0)
    """fastai's RNNTrainer (alpha, beta): activation and temporal activation regularization of
    the model's sown intermediates 'last_output' (jaxfast.losses.activation_penalty), added to
    the training objective only (the reported loss is the task's); (0, 0): off."""

    def __post_init__(self):
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}")
        if len(self.activation_reg) != 2 or not all(0.0 <= float(w) < float("inf") for w in self.activation_reg):
            raise ValueError(f"activation_reg must be two finite weights >= 0 (alpha, beta), got {self.activation_reg!r}")


class TrainState(struct.PyTreeNode):
    """Params, BatchNorm statistics, optimizer state, step counter and base rng, and the
    model's carried state (`carry`: e.g. an LM's hidden state between batches, the model's
    "carry" variable collection; empty for most models)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    task: Task = struct.field(pytree_node=False)
    carry: Any = struct.field(default_factory=dict)

    def variables(self) -> dict:
        """The variables dict that `apply_fn` expects (the carry is the step's business)."""
        variables = {"params": self.params}
        if self.batch_stats:
            variables["batch_stats"] = self.batch_stats
        return variables

    def with_optimizer(self, tx: optax.GradientTransformation) -> "TrainState":
        """A state whose optimizer is `tx`, with fresh optimizer statistics (fastai
        builds a new optimizer after freeze/unfreeze too)."""
        return self.replace(tx=tx, opt_state=tx.init(self.params))


def apply_model(apply_fn: Callable, variables: dict, inputs, **kwargs):
    """`apply_fn(variables, inputs, ...)`; a dict of inputs is passed as keyword arguments
    (e.g. an LM's {'tokens', 'reset', 'token_mask'})."""
    if isinstance(inputs, dict):
        return apply_fn(variables, **inputs, **kwargs)
    return apply_fn(variables, inputs, **kwargs)


def init_all_variables(model, sample_inputs, seed: int) -> dict:
    """Initialise the variables of a Flax module from one sample batch: params, and
    batch_stats / carry when the model has them."""
    params_key, dropout_key = jax.random.split(jax.random.key(seed))
    rngs = {"params": params_key, "dropout": dropout_key}
    return jax.jit(lambda x: apply_model(model.init, rngs, x, train=False))(sample_inputs)


def init_variables(model, sample_inputs, seed: int) -> tuple[Any, Any]:
    """(params, batch_stats) of a Flax module initialised from one sample batch."""
    variables = init_all_variables(model, sample_inputs, seed)
    return variables["params"], variables.get("batch_stats", {})


def create_train_state(model, sample_inputs, tx: optax.GradientTransformation, task: Task, seed: int = 0) -> TrainState:
    """A fresh state for `model`, initialised from `sample_inputs` (one batch of inputs)."""
    variables = init_all_variables(model, sample_inputs, seed)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed + 1)),
        apply_fn=model.apply,
        tx=tx,
        task=task,
        carry=variables.get("carry", {}),
    )


def copy_tree(tree):
    """A copy with fresh buffers, so that donating it never invalidates `tree`."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)
