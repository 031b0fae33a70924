"""A training script's plan: the phases (`fit*` calls, `lr_find`) in the order it runs them.

Every checkpoint records the plan so far, each phase by its signature (kind, epochs,
learning rates, momentums, weight decay, frozen groups, data size). A rerun replays the
script: each phase's signature is compared with the recorded one at the same position,
so an edited or reordered script is refused with a message saying what changed, instead
of restoring a checkpoint into the wrong phase. A recorded `lr_find` gives back its
recorded result without running again.
"""

from __future__ import annotations

import json
import math

from jaxfast.errors import JaxfastError


class PhaseMismatch(JaxfastError):
    """The script's phases differ from those recorded in the workdir's checkpoints."""


def _plain(value):
    """JSON-normal form: tuples as lists, floats rounded to 10 significant digits."""
    if isinstance(value, float):
        return float(f"{value:.10g}") if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, slice):
        return {"slice": [_plain(value.start), _plain(value.stop)]}
    return value


def signature(kind: str, **settings) -> dict:
    """The JSON signature of one phase."""
    return json.loads(json.dumps(_plain({"kind": kind, **settings})))


def describe(sig: dict) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in sig.items() if k != "kind")
    return f"{sig.get('kind')}({settings})"


def check_phase(recorded: list[dict], index: int, sig: dict, where: str) -> None:
    """Raise PhaseMismatch when phase `index` of the script differs from the recorded one."""
    if index >= len(recorded):
        return
    old = {k: v for k, v in recorded[index].items() if k != "result"}  # an lr_find's recorded outcome
    if old == sig:
        return
    changed = sorted(k for k in set(old) | set(sig) if old.get(k) != sig.get(k))
    details = "; ".join(f"{k}: {old.get(k)!r} recorded vs {sig.get(k)!r} now" for k in changed)
    raise PhaseMismatch(
        f"phase {index} of this run ({describe(sig)}) differs from the one recorded in {where} "
        f"({describe(old)}): {details}. Restore the script's earlier phases, or use another workdir "
        "(or delete it) to start over"
    )
