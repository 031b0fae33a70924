"""Architectures by name, so an exported model can be rebuilt from JSON.

Each entry maps a name to a function taking the architecture's config as keyword
arguments (plain JSON values) and returning a Flax module. A model module registers its
names with `@register(name)` when imported; the registry imports only the module that
defines the name asked for (`module_of`: the module recorded in an export, else the
table of jaxfast's own families below), so rebuilding a model never imports the others
nor any training code.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

import flax.linen as nn

_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}

# jaxfast's own architectures: name -> the module (under jaxfast.models) that registers it.
FAMILIES: dict[str, tuple[str, ...]] = {
    "awd_lstm": ("awd_lstm_lm", "awd_lstm_clas"),
    "collab": ("embedding_dot_bias", "embedding_nn"),
    "gan": ("basic_generator", "basic_critic", "gan_critic"),
    "heads": ("cnn",),
    "mlp": ("logistic", "mlp"),
    "resnet": ("resnet18", "resnet34", "resnet50", *(f"cifar_resnet{d}" for d in (20, 32, 44, 56))),
    "rnn": ("rnn_lm",),
    "simple_cnn": ("simple_cnn", "mnist_resnet"),
    "small_resnet": ("small_resnet",),
    "tabular": ("tabular",),
    "unet": ("unet",),
    "vgg": ("vgg16_bn",),
}
_MODULE_OF = {name: f"jaxfast.models.{family}" for family, names in FAMILIES.items() for name in names}


def register(name: str):
    """Decorator: make `factory` buildable as `build_model(name, config)`."""

    def decorate(factory):
        if name in _ARCHITECTURES and _ARCHITECTURES[name] is not factory:
            raise ValueError(f"architecture {name!r} is registered twice")
        _ARCHITECTURES[name] = factory
        return factory

    return decorate


def module_of(arch: str) -> str | None:
    """The module that registers `arch` (None when unknown): recorded in exports."""
    factory = _ARCHITECTURES.get(arch)
    return factory.__module__ if factory is not None else _MODULE_OF.get(arch)


def lookup(arch: str, module: str | None = None) -> Callable[..., nn.Module]:
    """The factory of `arch`, importing `module` (default: jaxfast's table) if needed."""
    if arch not in _ARCHITECTURES:
        module = module or _MODULE_OF.get(arch)
        if module is None:
            raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(known_architectures())}")
        if not (module == "jaxfast" or module.startswith("jaxfast.")):
            raise ValueError(f"architecture {arch!r}: module {module!r} is outside jaxfast and is not imported")
        importlib.import_module(module)
        if arch not in _ARCHITECTURES:
            raise ValueError(f"module {module} does not register architecture {arch!r}")
    return _ARCHITECTURES[arch]


def build_model(arch: str, config: dict, module: str | None = None) -> nn.Module:
    """The module `arch` built from `config`; unknown names list the known ones."""
    factory = lookup(arch, module)
    try:
        return factory(**config)
    except TypeError as err:
        raise ValueError(f"architecture {arch!r} does not accept config {config}: {err}") from err


def known_architectures() -> list[str]:
    return sorted(set(_ARCHITECTURES) | set(_MODULE_OF))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered architecture and its JSON config: enough to rebuild the model (exports)."""

    arch: str
    config: dict

    def build(self) -> nn.Module:
        return build_model(self.arch, self.config)
