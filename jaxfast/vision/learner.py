"""fastai v1's vision learner factories: `cnn_learner` and `unet_learner`, thin builders of
the one Learner (a registered model spec, its layer groups, pretrained weights, the export
meta), and the interpretation PNGs the vision lessons write.

    data = image_databunch("photos", valid_pct=0.2, size=128)
    learn = cnn_learner(data, "resnet34", pretrained=True, metrics=["error_rate"])
    learn.fit_one_cycle(4)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from jaxfast.learner import Learner, TrainConfig
from jaxfast.models.heads import cnn_layer_groups
from jaxfast.models.hub import load_pretrained_body, resolve_pretrained
from jaxfast.models.registry import ModelSpec
from jaxfast.models.unet import unet_layer_groups

# Bodies that need a config besides their defaults (the tiny variants' body).
BODY_CONFIGS = {"simple_cnn": {"features": [16, 32, 64], "bn": True}}


def cnn_spec(arch: str, n_classes: int, *, lin_ftrs: Sequence[int] = (512,), ps: float = 0.5, bn_final: bool = False,
             concat_pool: bool = True, body_config: dict | None = None, conv_lowering: str = "auto") -> ModelSpec:
    """The registered `cnn` model: the body `arch` cut before its pooling, fastai's head on top."""
    body = BODY_CONFIGS.get(arch, {}) if body_config is None else body_config
    if conv_lowering != "auto":
        body = {**body, "conv_lowering": conv_lowering}
    return ModelSpec("cnn", {"body_arch": arch, "n_classes": n_classes, "body_config": dict(body),
                             "lin_ftrs": list(lin_ftrs), "ps": ps, "concat_pool": concat_pool, "bn_final": bn_final})


def cnn_learner(
    data, base_arch: str = "resnet34", pretrained: bool | str = True, *, metrics: Sequence = (),
    lin_ftrs: Sequence[int] = (512,), ps: float = 0.5, bn_final: bool = False, concat_pool: bool = True,
    body_config: dict | None = None, conv_lowering: str = "auto", loss: str | Callable = "cross_entropy",
    config: TrainConfig = TrainConfig(), workdir: str | Path | None = None, log: Callable[[str], None] = print,
) -> Learner:
    """fastai's cnn_learner on an image DataBunch (its loaders know the classes, size and stats).

    `pretrained`: True loads the ImageNet weights of `base_arch` by name (downloaded once into
    the cache, see jaxfast.models.hub), a string is a weights name or a local .pth/.safetensors
    file, False starts from random weights. With pretrained weights the body is frozen, as
    fastai does (`learn.unfreeze()` trains it)."""
    pretrained = _resolved(pretrained, base_arch)
    spec = cnn_spec(base_arch, len(data.train.classes), lin_ftrs=lin_ftrs, ps=ps,
                    bn_final=bn_final, concat_pool=concat_pool, body_config=body_config, conv_lowering=conv_lowering)
    model = spec.build()
    learn = Learner(spec, data, loss, metrics, layer_groups=cnn_layer_groups(model), config=config, workdir=workdir,
                    log=log, export_meta=image_meta)
    if load_body(learn, base_arch, pretrained, log):
        learn.freeze()
    return learn


def unet_learner(
    data, base_arch: str = "resnet34", pretrained: bool | str = True, *, metrics: Sequence = (), blur: bool = False,
    blur_final: bool = True, y_range: tuple[float, float] | None = None, last_cross: bool = True, bottle: bool = False,
    n_classes: int | None = None, conv_lowering: str = "auto", norm_type: str | None = None,
    self_attention: bool = False, loss: str | Callable = "cross_entropy", config: TrainConfig = TrainConfig(),
    workdir: str | Path | None = None, log: Callable[[str], None] = print, export_meta: Callable | None = None,
) -> Learner:
    """fastai's unet_learner: a DynamicUnet on the ResNet `base_arch` (encoder pretrained as in
    `cnn_learner`, then frozen). `n_classes` defaults to the data's classes (segmentation codes).
    Lesson 7's options: `norm_type` ('weight' = NormType.Weight, 'batch', 'spectral', None),
    `self_attention`, `y_range`, `blur`. `export_meta`: the export's prediction meta from the
    data (default: a segmentation's)."""
    n_classes = len(data.train.classes) if n_classes is None else n_classes
    pretrained = _resolved(pretrained, base_arch)
    spec = ModelSpec("unet", {"encoder_arch": base_arch, "n_classes": n_classes, "blur": blur, "blur_final": blur_final,
                              "y_range": None if y_range is None else list(y_range), "last_cross": last_cross,
                              "bottle": bottle, "conv_lowering": conv_lowering})
    if norm_type is not None or self_attention:  # only then, so earlier exports' configs stay as they were
        spec = ModelSpec("unet", {**spec.config, "norm_type": norm_type, "self_attention": bool(self_attention)})
    model = spec.build()
    learn = Learner(spec, data, loss, metrics, layer_groups=unet_layer_groups(model), config=config, workdir=workdir,
                    log=log, export_meta=segmentation_meta if export_meta is None else export_meta)
    if load_body(learn, base_arch, pretrained, log, target={"prefix": ("encoder",), "ignore": ("fc",)}):
        learn.freeze()
    return learn


def _resolved(pretrained: bool | str | None, arch: str) -> bool | str:
    """`pretrained` unchanged, its named or default weights file fetched first (once, into the
    cache) before the model is built and compiled, so that an offline run fails within seconds."""
    if pretrained is None or pretrained is False:
        return False
    resolve_pretrained(pretrained, arch)
    return pretrained


def load_body(learn: Learner, arch: str, pretrained: bool | str, log: Callable[[str], None],
              target: dict | None = None) -> bool:
    """Load pretrained weights into the learner's body (True: `arch`'s ImageNet weights by
    name); says what was loaded, or that the body starts from random weights."""
    variables, message = load_pretrained_body(learn.state.variables(), pretrained, arch, learn.model, target=target)
    log(message)
    if pretrained is False or pretrained is None:
        return False
    learn.state = learn.state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}))
    return True


def image_meta(data, kind: str = "image_classifier") -> dict | None:
    """The export meta of an image DataBunch (classes, input size, stats, resize method), or
    None when its loaders do not describe their images (e.g. arrays)."""
    loader = data.valid if data.valid is not None else data.train
    if not all(hasattr(loader, name) for name in ("classes", "size", "stats", "resize_method")):
        return None
    from jaxfast.vision.predict_images import image_export_meta

    meta = image_export_meta(loader.classes, loader.size, loader.stats, loader.resize_method)
    return {**meta, "kind": kind}


def segmentation_meta(data) -> dict | None:
    """`image_meta` of a segmentation DataBunch (export kind 'segmentation')."""
    return image_meta(data, kind="segmentation")


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
