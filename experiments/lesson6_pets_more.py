"""Lesson 6 (pets-more): heavy augmentation, bn_final, progressive resizing, Grad-CAM, TTA.

fastai's protocol: get_transforms(max_rotate=20, max_zoom=1.3, max_lighting=0.4,
max_warp=0.4, p_affine=1, p_lighting=1) with reflection padding, 20% validation (seed 2),
size 224, bs 64, cnn_learner(resnet34, bn_final=True); fit_one_cycle(3, slice(1e-2),
pct_start=0.8); unfreeze; fit_one_cycle(2, slice(1e-6, 1e-3), pct_start=0.8); then at size
352 fit_one_cycle(2, slice(1e-6, 1e-4)), all from an ImageNet-pretrained body.
Figures: augmentations.png (one training image augmented several times), gradcam.png
(Grad-CAM of the last body activations), tta.png (the TTA views of one image, with the
TTA error next to the plain one), plus top_losses.png and confusion_matrix.png.
Data as lesson1_pets (tfds oxford_iiit_pet, or --data-dir); the tiny variant is generated.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxfast import experiment
from jaxfast.experiment import Run, RunConfig, print_results
from jaxfast.interpret import agg_pyplot, denormalize
from jaxfast.learner import Learner, TrainConfig
from jaxfast.vision import (
    ImageLoader,
    catalog_databunch,
    cnn_learner,
    databunch_with_size,
    get_transforms,
    interpret_to_pngs,
)
from jaxfast.vision.gradcam import grad_cam, plot_gradcam
from jaxfast.vision.learner import image_meta
from jaxfast.vision.synthetic import write_synthetic_pets
from jaxfast.vision.tta import CORNERS, tta_get_preds, tta_views
from jaxfast.show import save_figure


@dataclasses.dataclass(frozen=True)
class Config:
    """Lesson 6: pets with heavy augmentation, bn_final, 224 then 352, Grad-CAM and TTA.

    --data-dir: a tfds data dir with oxford_iiit_pet prepared, or fastai's oxford-iiit-pet folder; without it, tfds."""

    run: Run = RunConfig()
    train: TrainConfig = TrainConfig()
    tfds_data_dir: str | None = None
    """Where tfds keeps its datasets (when --data-dir is not given)."""
    synthetic: bool = False
    """Without --data-dir: generated images (workdir/synthetic_pets) instead of tfds."""
    arch: str = "resnet34"
    pretrained: str | None = None
    """ImageNet weights of the body: a name (resnet34, ...) or a .pth/.safetensors file; absent: random init."""
    size: int = 224
    size_large: int = 352
    """Progressive resizing: the last phase trains at this size."""
    batch_size: int = 64
    valid_pct: float = 0.2
    split_seed: int = 2
    max_rotate: float = 20.0
    max_zoom: float = 1.3
    max_lighting: float = 0.4
    max_warp: float = 0.4
    p_affine: float = 1.0
    p_lighting: float = 1.0
    epochs_frozen: int = 3
    lr_frozen: float = 1e-2
    """The head's rate: slice(1e-2) (body groups get a tenth)."""
    epochs_unfrozen: int = 2
    lr_unfrozen: tuple[float, float] = (1e-6, 1e-3)
    pct_start: float = 0.8
    epochs_large: int = 2
    lr_large: tuple[float, float] = (1e-6, 1e-4)
    n_augmented: int = 8
    n_gradcam: int = 4
    top_losses: int = 9


TINY = Config(train=TrainConfig(progress=False), synthetic=True, arch="simple_cnn", size=32, size_large=40,
              batch_size=8, epochs_frozen=1, epochs_unfrozen=1, lr_unfrozen=(1e-4, 1e-3), epochs_large=1,
              lr_large=(1e-5, 1e-4), n_gradcam=4, top_losses=4)


def plot_augmented(loader: ImageLoader, n: int, path: Path) -> Path:
    """The first training image augmented `n` times with the loader's transforms, as a grid."""
    source = loader.source
    one = dataclasses.replace(source, items=np.repeat(source.items[:1], n, axis=0),
                              labels=np.repeat(source.labels[:1], n), name="augmented")
    images = next(ImageLoader(one, n, size=loader.size, tfms=loader.tfms, stats=None, seed=loader.seed).batches(0))
    return _grid(images["inputs"], [f"#{i + 1}" for i in range(n)], f"one image ({source.classes[source.labels[0]]}), "
                 f"{n} random augmentations", path)


def _grid(images, titles, title: str, path: Path, ncols: int = 4) -> Path:
    plt = agg_pyplot()
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.8 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, name in zip(axes.flat, images, titles):
        ax.imshow(np.clip(image, 0.0, 1.0))
        ax.set_title(name, fontsize=9)
    fig.suptitle(title)
    return save_figure(fig, path)


def gradcam_figure(learn: Learner, n: int, path: Path) -> Path:
    """Grad-CAM of the predicted class for the first `n` validation images."""
    loader = learn.data.valid
    batch = next(loader.batches(0))
    images, targets = batch["inputs"][:n], batch["targets"][:n]
    cams, predicted = grad_cam(learn.model, learn.state.variables(), images)
    titles = [f"{loader.classes[t]} -> {loader.classes[p]}" for t, p in zip(targets, predicted)]
    return plot_gradcam(images, cams, path, titles, stats=loader.stats)


def tta(learn: Learner, path: Path, plain_error: float) -> dict:
    """fastai's learn.TTA() on the validation set, and tta.png: one image's TTA views."""
    probs, targets = tta_get_preds(learn)
    accuracy = float((probs.argmax(axis=1) == targets).mean())
    loader = learn.data.valid
    image = next(loader.batches(0))["inputs"][:1]
    views = [image[0]] + [np.asarray(view)[0] for view in tta_views(jnp.asarray(image))]
    names = ["plain"] + [f"{side}{corner.replace('_', ' ')}" for side in ("", "flipped, ") for corner in CORNERS]
    shown = denormalize(np.stack(views), loader.stats)
    title = f"TTA views; valid error {plain_error:.4f}, with TTA {1 - accuracy:.4f}"
    _grid(shown, names, title, path, ncols=3)
    return {"valid_tta_accuracy": accuracy, "valid_tta_error_rate": 1.0 - accuracy}


def make_data(config: Config, workdir: Path):
    data_dir = config.run.data_dir
    if data_dir is None and config.synthetic:
        data_dir = write_synthetic_pets(workdir / "synthetic_pets", seed=config.train.seed)
    tfms = get_transforms(max_rotate=config.max_rotate, max_zoom=config.max_zoom, max_lighting=config.max_lighting,
                          max_warp=config.max_warp, p_affine=config.p_affine, p_lighting=config.p_lighting)
    return catalog_databunch(
        "oxford_iiit_pet", data_dir=data_dir, tfds_data_dir=config.tfds_data_dir, valid_pct=config.valid_pct,
        seed=config.split_seed, size=config.size, batch_size=config.batch_size, tfms=tfms, stats="imagenet",
    )


def main(config: Config, workdir: Path) -> dict:
    data = make_data(config, workdir)
    print(f"augmentations: {plot_augmented(data.train, config.n_augmented, workdir / 'augmentations.png')}")
    pretrained = config.pretrained or False
    learn = cnn_learner(data, config.arch, pretrained, metrics=["error_rate", "accuracy"], bn_final=True,
                        config=config.train, workdir=workdir)
    if not pretrained:
        learn.freeze()  # the lesson's schedule either way: the head first
    print(f"== {config.arch} + bn_final, size {config.size}: body frozen ({len(data.train)} steps/epoch)")
    learn.fit_one_cycle(config.epochs_frozen, slice(config.lr_frozen), pct_start=config.pct_start)
    print(f"== unfrozen, lr slice{config.lr_unfrozen}")
    learn.unfreeze()
    learn.fit_one_cycle(config.epochs_unfrozen, slice(*config.lr_unfrozen), pct_start=config.pct_start)
    print(f"== size {config.size_large}, lr slice{config.lr_large}")
    learn.data = databunch_with_size(data, config.size_large)
    learn.fit_one_cycle(config.epochs_large, slice(*config.lr_large))
    results = learn.evaluate_all()
    results.update(tta(learn, workdir / "tta.png", results["valid_error_rate"]))
    print_results(results)
    interpret_to_pngs(learn, workdir, config.top_losses, 2)
    print(f"grad-cam: {gradcam_figure(learn, config.n_gradcam, workdir / 'gradcam.png')}")
    path = learn.export(workdir / "export", meta=image_meta(learn.data))  # the meta of the last size
    print(f"export: {path}")
    return results


if __name__ == "__main__":
    experiment.run(main, Config(), TINY)
