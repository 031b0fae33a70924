"""jaxfast: the fastai course v3 rebuilt on JAX, Flax and Optax."""
