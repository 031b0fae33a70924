"""jaxfast: the fastai course v3 rebuilt on JAX, Flax and Optax.

    from jaxfast.vision import image_databunch, cnn_learner
    from jaxfast import load_learner
"""


def __getattr__(name: str):
    """`load_learner` is imported on first use (it loads no training code)."""
    if name == "load_learner":
        from jaxfast.inference import load_learner

        return load_learner
    raise AttributeError(f"module 'jaxfast' has no attribute {name!r}")
