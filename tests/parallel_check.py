"""Run in a subprocess with fake CPU devices (XLA_FLAGS set by the caller).

Checks that pmap and sharded-jit steps give the same result as one device on the
same global batch, that many sharded steps in a row do not hang, and that a
checkpoint written on one device restores onto several. Prints 'OK' at the end.
"""

import shutil
import sys
import tempfile

import jax
import numpy as np

from jaxfast import optim, parallel
from jaxfast.data.loader import ArrayLoader, DataBunch
from jaxfast.learner import Learner, TrainConfig
from jaxfast.losses import get_loss
from jaxfast.metrics import get_metrics
from jaxfast.models.mlp import mlp
from jaxfast.state import Task, create_train_state

n_dev = jax.local_device_count()
assert n_dev >= 2, f"expected fake devices, got {n_dev}"
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 12)).astype(np.float32)
y = rng.integers(0, 4, size=64).astype(np.int32)
model = mlp((16,), 4, dropout=0.0)
task = Task(get_loss("cross_entropy"), get_metrics(["accuracy"]))


def run(mode: str, steps: int = 5):
    state = create_train_state(model, x[:8], optim_tx(), task, seed=0)
    runner = parallel.make_runner(mode)
    dstate = runner.put_state(state)
    losses = []
    for i in range(steps):
        idx = np.arange(i * 16, (i + 1) * 16) % 64
        mask = np.ones(16, np.float32)
        mask[-3:] = 0.0 if i == steps - 1 else 1.0  # a padded batch too
        batch = {"inputs": x[idx], "targets": y[idx], "mask": mask}
        dstate, metrics = runner.train_step(dstate, runner.put_batch(batch))
        losses.append(runner.get_metrics(metrics)["loss"]["sum"])
    ev = runner.get_metrics(runner.eval_step(dstate, runner.put_batch({"inputs": x[:16], "targets": y[:16], "mask": mask}))[0])
    return runner.get_state(dstate), np.array(losses), ev


def optim_tx():
    params = create_train_state(model, x[:8], optim_placeholder(), task).params
    labels = optim.label_layer_groups(params, lambda p: 0, 1)
    return optim.make_optimizer(params, {}, labels, lrs=[optim.one_cycle_lr(1e-2, 5)], moms=optim.one_cycle_momentum(5))


def optim_placeholder():
    import optax

    return optax.identity()


ref_state, ref_losses, ref_eval = run("single")
# The last: a data axis of half the devices, each batch shard replicated over a 'model' axis of 2.
for name, mode in (("pmap", "pmap"), ("mesh", "mesh"), ("mesh_data", parallel.ParallelConfig("mesh", n_dev // 2))):
    state, losses, ev = run(mode)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6, err_msg=mode)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=mode)
    for a, b in zip(jax.tree.leaves(ev), jax.tree.leaves(ref_eval)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=mode)
    print(name, "matches single device")

# Many sharded steps through the Learner loop: must not hang (the caller has a timeout).
big_x = rng.normal(size=(512, 12)).astype(np.float32)
big_y = rng.integers(0, 4, size=512).astype(np.int32)
data = DataBunch(
    ArrayLoader(big_x, big_y, 8, shuffle=True, drop_last=True),
    ArrayLoader(big_x[:40], big_y[:40], 8),
)
with tempfile.TemporaryDirectory() as tmp:
    single = Learner(model, data, "cross_entropy", ["accuracy"], workdir=f"{tmp}/single",
                     config=TrainConfig(parallel="single", progress=False), log=lambda s: None)
    single.fit_one_cycle(1, 1e-2)
    print("sharded loop: 64 single steps done, checkpoint written")
    # Restore the 1-device checkpoint onto all devices (mesh) and train on: 3 more epochs.
    for mode in ("mesh", "pmap"):
        workdir = shutil.copytree(f"{tmp}/single", f"{tmp}/{mode}")  # each mode resumes the 1-device run
        sharded = Learner(model, data, "cross_entropy", ["accuracy"], workdir=workdir,
                          config=TrainConfig(parallel=mode, progress=False), log=lambda s: None)
        assert sharded.resuming
        sharded.fit_one_cycle(1, 1e-2)  # phase 0 already done: restored, not retrained
        for a, b in zip(jax.tree.leaves(sharded.state.params), jax.tree.leaves(single.state.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=0)
        # Inference runs through the runner: same predictions on the devices as on one.
        for a, b in zip(sharded.get_preds(), single.get_preds()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{mode} get_preds")
        odd = big_x[:13]  # not a multiple of the device count: padded, then cut back
        np.testing.assert_allclose(sharded.predict(odd), single.predict(odd), rtol=1e-5, atol=1e-6, err_msg=mode)
        sharded.fit_one_cycle(2, 1e-2)  # a new phase, 128 sharded steps
        print(mode, "restored a 1-device checkpoint on", n_dev, "devices and trained on:", sharded.validate())

# A carried state (an LM's hidden rows, kept from batch to batch) is split like the batch: a
# tiny AWD-LSTM LM without dropout trains to the same weights and last hidden state in every mode.
from test_carry import leaves, lm_learner  # noqa: E402

trained = {}
for mode in ("single", "mesh", "pmap"):
    learn = lm_learner(parallel=mode)
    learn.fit_one_cycle(3, 5e-2)
    trained[mode] = (leaves((learn.state.params, learn.state.carry)), learn.validate())
for mode in ("mesh", "pmap"):
    assert any(np.any(leaf) for leaf in trained[mode][0][-4:])  # a non-zero carry came back
    for a, b in zip(trained["single"][0], trained[mode][0], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    for key, value in trained["single"][1].items():
        np.testing.assert_allclose(trained[mode][1][key], value, rtol=1e-4, atol=1e-6, err_msg=key)
    print(mode, "carried LM state matches single device")
print("OK")
sys.exit(0)
