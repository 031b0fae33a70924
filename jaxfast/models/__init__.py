"""Flax model architectures for jaxfast, one module per family (conv, resnet, rnn, ...)."""
