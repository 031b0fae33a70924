"""Shared fixtures: where the real datasets live, and small fake data."""

import atexit
import gc
import gzip
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _share_compiled_code() -> None:
    """One persistent XLA compilation cache for this test session and every process it starts
    (the environment is inherited): the suite compiles the same programs many times (each test
    builds its own state; a resume or a kill -9 rerun is a new process), and compiles dominate
    its time on 2 cores. Compiled code is the same either way (the kill tests compare bitwise
    runs that mix both). A JAX_COMPILATION_CACHE_DIR set by the caller is kept."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    cache = tempfile.mkdtemp(prefix="jaxfast-test-xla-cache-")
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
    if "jax" in sys.modules:  # imported before this conftest (a plugin): tell it too
        sys.modules["jax"].config.update("jax_compilation_cache_dir", cache)


_share_compiled_code()


def shared_dataset(name: str) -> Path:
    """Path of ../shared/data/NAME, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data set {path} is absent (it lives beside the repo in ../shared/data)")
    return path


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an idx file (gzipped when the name ends in .gz)."""
    magic = 2051 if array.ndim == 3 else 2049
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(autouse=True, scope="module")
def release_compiled_code():
    """After each test module, drop JAX's compiled executables and traces. jit caches key on a
    state's static fields (model, optimizer, task), which are new objects in every test, so a
    whole suite in one process would otherwise keep every executable it compiled. Each holds
    memory mappings: at Linux's vm.max_map_count (65,530 by default) LLVM cannot allocate code
    memory and the process dies of SIGSEGV inside XLA's compiler (a CI run did, at ~57% of the
    suite; /proc/PID/maps now peaks near 22,000)."""
    yield
    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()
    gc.collect()


@pytest.fixture
def full_precision():
    """fp32 dots and convolutions at full precision on every backend: equality tests compare
    two lowerings to 1e-5, and XLA runs fp32 as TF32 on recent NVIDIA GPUs by default (errors
    up to 1e-2 seen on an H200). A no-op on the CPU, which has no TF32."""
    import jax

    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture
def fake_mnist_dir(tmp_path) -> Path:
    """A test-set-only MNIST folder of 800 learnable fake digits (class = bright stripe row)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=800)
    images = rng.integers(0, 60, size=(800, 28, 28))
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label : 4 + 2 * label, :] = 255
    folder = tmp_path / "mnist"
    folder.mkdir()
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels)
    return folder
