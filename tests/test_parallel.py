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
    assert proc.stdout.strip().endswith("OK")
