"""fastai's layer groups as data: which parameters train at which rate, or stay frozen.

Kept apart from the optimizer code (jaxfast.optim, which labels a param tree with these
groups) so that model files can name their groups without importing training code.
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class LayerGroups:
    """fastai's layer groups as data (big_vision style): `(name, regex)` pairs, body first,
    head last. A parameter belongs to the first group whose regex matches (`re.search`) its
    '/'-joined path, e.g. 'body/layer3_0/conv1/kernel'; `label_layer_groups` asserts that
    every parameter has a group and that no group is empty."""

    groups: tuple[tuple[str, str], ...]

    def __post_init__(self):
        if not self.groups:
            raise ValueError("LayerGroups needs at least one (name, regex) group")
        names = [name for name, _ in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"layer group names repeat: {names}")
        for name, pattern in self.groups:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"layer group {name!r}: bad regex {pattern!r}: {err}") from err

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.groups]

    def group_of_path(self, path: tuple[str, ...]) -> int:
        """Index of the first group whose regex matches '/'.join(path)."""
        joined = "/".join(path)
        for index, (_, pattern) in enumerate(self.groups):
            if re.search(pattern, joined):
                return index
        raise ValueError(f"matches none of the layer groups {dict(self.groups)}")


SINGLE_GROUP = LayerGroups((("all", ""),))
