"""pmap and sharded jit equal one device; many sharded steps don't hang; a checkpoint
restores onto another device count. Runs tests/parallel_check.py with fake CPU devices."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("parallel_check.py")


@pytest.mark.parametrize("n_devices", [2, 4])
def test_parallel_modes_match_single_device(n_devices):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pmap matches single device" in proc.stdout
    assert "mesh matches single device" in proc.stdout
    assert "mesh_data matches single device" in proc.stdout
    assert "mesh carried LM state matches single device" in proc.stdout
    assert "pmap carried LM state matches single device" in proc.stdout
    assert proc.stdout.strip().endswith("OK")


def test_mesh_settings_are_checked_before_any_step():
    from jaxfast.errors import InputError
    from jaxfast.parallel import ParallelConfig, make_runner

    with pytest.raises(InputError, match="--mesh-data 3 must divide the 1 devices"):
        make_runner(ParallelConfig("mesh", mesh_data=3), devices=jax_devices()[:1])
    with pytest.raises(InputError, match="--mesh-data 2 sets the data axis of --parallel mesh, not of pmap"):
        make_runner(ParallelConfig("pmap", mesh_data=2))
    with pytest.raises(InputError, match="unknown --parallel 'ring'"):
        make_runner("ring")
    runner = make_runner(ParallelConfig("mesh", mesh_data=1), devices=jax_devices()[:1])
    assert (runner.mode, runner.data_shards) == ("mesh", 1)
    runner.check_batch_size(7)  # one shard takes any batch


def jax_devices():
    import jax

    return jax.local_devices()


def test_single_cpu_train_step_compiles_with_the_memory_saving_schedule():
    """make_runner('single') compiles the CPU train step with CPU_TRAIN_STEP_OPTIONS: XLA's
    per-call scratch block (whose pages fault in on every step) comes out smaller than with
    a plain jit of the same step, and the step's results are the same."""
    import jax
    import numpy as np
    import optax

    from jaxfast import steps
    from jaxfast.losses import get_loss
    from jaxfast.models.simple_cnn import mnist_resnet
    from jaxfast.parallel import make_runner
    from jaxfast.state import Task, create_train_state

    if jax.default_backend() != "cpu":
        pytest.skip("the option is for XLA:CPU only")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 28, 28, 1)).astype(np.float32)
    batch = {"inputs": x, "targets": rng.integers(0, 10, 64).astype(np.int32), "mask": np.ones(64, np.float32)}
    state = create_train_state(mnist_resnet(), x, optax.adam(1e-3), Task(get_loss("cross_entropy"), (), "float32"), 0)
    runner_step = make_runner("single").train_step.lower(state, batch).compile()
    plain_step = jax.jit(steps.train_step, donate_argnums=0).lower(state, batch).compile()
    scratch = lambda compiled: compiled.memory_analysis().temp_size_in_bytes
    assert scratch(runner_step) < 0.9 * scratch(plain_step), (scratch(runner_step), scratch(plain_step))
    copy = lambda tree: jax.tree.map(lambda x: x.copy() if hasattr(x, "copy") else x, tree)  # noqa: E731
    (new_a, metrics_a), (new_b, metrics_b) = plain_step(copy(state), batch), runner_step(copy(state), batch)
    np.testing.assert_allclose(metrics_a["loss"]["sum"], metrics_b["loss"]["sum"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(new_a.params), jax.tree.leaves(new_b.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
