"""Architectures by name, so an exported model can be rebuilt from JSON.

Each entry maps a name to a function taking the architecture's config as keyword
arguments (plain JSON values) and returning a Flax module.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn

_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator: make `factory` buildable as `build_model(name, config)`."""

    def decorate(factory):
        if name in _ARCHITECTURES and _ARCHITECTURES[name] is not factory:
            raise ValueError(f"architecture {name!r} is registered twice")
        _ARCHITECTURES[name] = factory
        return factory

    return decorate


def build_model(arch: str, config: dict) -> nn.Module:
    """The module `arch` built from `config`; unknown names list the known ones."""
    _import_builtin_models()
    if arch not in _ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(_ARCHITECTURES))}")
    try:
        return _ARCHITECTURES[arch](**config)
    except TypeError as err:
        raise ValueError(f"architecture {arch!r} does not accept config {config}: {err}") from err


def known_architectures() -> list[str]:
    _import_builtin_models()
    return sorted(_ARCHITECTURES)


def _import_builtin_models() -> None:
    """Import the modules that register jaxfast's own architectures."""
    from jaxfast.models import collab, heads, mlp, resnet, rnn, simple_cnn, tabular, unet  # noqa: F401
