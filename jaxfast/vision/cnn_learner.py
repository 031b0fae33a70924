"""fastai's cnn_learner: a registered body + fastai's head, its layer groups, an optional
pretrained body, and the interpretation PNGs the vision lessons write."""

from __future__ import annotations

from pathlib import Path

from jaxfast.learner import Learner, TrainConfig
from jaxfast.models.convert import (
    load_pretrained,
    pretrained_target,
    random_init_message,
)
from jaxfast.models.heads import cnn_layer_groups
from jaxfast.models.registry import build_model

# The tiny variants' body; any other registered body is built with its defaults.
BODY_CONFIGS = {"simple_cnn": {"features": [16, 32, 64], "bn": True}}


def cnn_arch_config(arch: str, n_classes: int, bn_final: bool = False) -> dict:
    """The `cnn` registry config of `arch` (a registered body) with fastai's head."""
    return {"body_arch": arch, "n_classes": n_classes, "body_config": BODY_CONFIGS.get(arch, {}), "bn_final": bn_final}


def cnn_learner(data, arch_config: dict, pretrained: str | None, metrics, train_config: TrainConfig,
                workdir: Path) -> Learner:
    """fastai's cnn_learner: the cnn with its layer groups, the body loaded from `pretrained`
    when given (the message says what was loaded, or that the init is random)."""
    model = build_model("cnn", arch_config)
    learn = Learner(model, data, "cross_entropy", metrics, layer_groups=cnn_layer_groups(model),
                    config=train_config, workdir=workdir)
    if pretrained is None:
        print(random_init_message(arch_config["body_arch"]))
        return learn
    variables, loaded = load_pretrained(learn.state.variables(), pretrained, **pretrained_target(model))
    learn.state = learn.state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}))
    print(loaded.message(arch_config["body_arch"]) + "; the head is randomly initialised")
    return learn


def interpret_to_pngs(learn: Learner, out: Path, top_k: int, min_val: int, loader=None):
    """fastai's ClassificationInterpretation on `loader` (default valid): top_losses.png,
    confusion_matrix.png and the most confused pairs printed."""
    from jaxfast.interpret import ClassificationInterpretation

    interp = ClassificationInterpretation.from_learner(learn, loader)
    interp.plot_top_losses(top_k, out / "top_losses.png")
    interp.plot_confusion_matrix(out / "confusion_matrix.png")
    pairs = interp.most_confused(min_val)
    shown = ", ".join(f"{actual} as {pred} ({n})" for actual, pred, n in pairs[:10]) or "none"
    print(f"most confused (>= {min_val}): {shown}")
    print(f"interpretation: {out / 'top_losses.png'}, {out / 'confusion_matrix.png'}")
    return interp
