"""Importing jaxfast.vision.pipeline leaves TensorFlow alone; the first tf.data dataset hides
TF's GPUs once (so that TF never claims the accelerator JAX uses)."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import numpy as np
    import tensorflow as tf

    calls = []
    real = tf.config.set_visible_devices
    tf.config.set_visible_devices = lambda devices, kind=None: (calls.append((list(devices), kind)), real(devices, kind))

    from jaxfast.vision.pipeline import ImageLoader, ImageSource

    assert calls == [], f"importing the pipeline touched TensorFlow's devices: {calls}"
    pixels = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    loader = ImageLoader(ImageSource("pixels", pixels, np.arange(4, dtype=np.int32), tuple("abcd")), 2, size=8,
                         stats=None)
    assert next(loader.batches())["inputs"].shape == (2, 8, 8, 3)
    assert list(loader.batches(1))[-1]["inputs"].shape == (2, 8, 8, 3)
    assert calls == [([], "GPU")], calls
    assert tf.config.get_visible_devices("GPU") == []
    print("ok")
""")


def test_import_has_no_side_effect_and_the_first_dataset_hides_gpus_once():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
