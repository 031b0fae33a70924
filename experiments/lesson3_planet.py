"""Lesson 3 (Planet): multi-label satellite tiles with a cnn, sigmoid BCE, F-beta.

fastai: resnet50, `get_transforms(flip_vert=True, max_lighting=0.1, max_zoom=1.05,
max_warp=0.)`, metrics accuracy_thresh(0.2) and fbeta(thresh 0.2); at 128 px
`fit_one_cycle(5, slice(0.01))` frozen, unfreeze, `fit_one_cycle(5, slice(1e-5, lr/5))`,
then the same at 256 px on a new data bunch: fbeta 0.9313. After training, the per-class
thresholds that maximise F-beta on valid are searched (coordinate ascent; tuned on valid
itself, so that figure is optimistic) and the rows with the largest losses are listed.

Data (--data-dir): Kaggle's Planet (train_v2.csv + train-jpg/) or fastai's planet_tiny
(labels.csv + train/), with a seeded `--valid-pct` split; any image folder with a CSV of
names and delimited labels (`--csv`, `--folder`, `--suffix`, `--label-delim`); or a CamVid
folder, the proxy used here (no Planet data on this machine): an image's labels are the
classes over `--min-share` of its labelled pixels (jaxfast.vision.proxies), CamVid's own
splits kept. Without --pretrained every group trains in every phase (a random body frozen
would stay random).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np

from jaxfast import experiment
from jaxfast.datasets import camvid, planet
from jaxfast.errors import InputError
from jaxfast.experiment import Run, RunConfig, print_results, write_json_atomic
from jaxfast.learner import TrainConfig
from jaxfast.losses import binary_cross_entropy
from jaxfast.metrics import accuracy_thresh, fbeta
from jaxfast.vision import ImageSource, cnn_learner, get_transforms, sources_databunch
from jaxfast.vision.multilabel import best_thresholds, fbeta_score, multilabel_top_losses, read_multilabel_csv
from jaxfast.vision.proxies import camvid_multilabel

PLANET_TFMS = get_transforms(flip_vert=True, max_lighting=0.1, max_zoom=1.05, max_warp=0.0)


@dataclasses.dataclass(frozen=True)
class Config:
    """Lesson 3: Planet multi-label (resnet50, 128 then 256 px, BCE, fbeta at 0.2, threshold search).

    --data-dir: Planet (train_v2.csv + train-jpg/), planet_tiny (labels.csv + train/), a folder with --csv, or CamVid (proxy)."""

    run: Run = RunConfig()
    train: TrainConfig = TrainConfig()
    arch: str = "resnet50"
    pretrained: str | None = None
    """ImageNet weights of the body: a name (resnet50, ...) or a .pth/.safetensors file; absent: from scratch."""
    small_size: int = 128
    large_size: int = 256
    resize_method: Literal["crop", "squish", "pad"] = "crop"
    batch_size: int = 64
    large_batch_size: int = 64
    epochs_head: int = 5
    """Per size: fit_one_cycle(epochs_head, slice(lr)), frozen when pretrained."""
    epochs_all: int = 5
    """Per size: unfreeze, fit_one_cycle(epochs_all, slice(lr_low, lr / 5))."""
    lr: float = 1e-2
    lr_low: float = 1e-5
    thresh: float = 0.2
    valid_pct: float = 0.2
    csv: str | None = None
    """A CSV of `name,labels` rows under --data-dir (generic multi-label folder)."""
    folder: str = ""
    suffix: str = ""
    label_delim: str = " "
    min_share: float = 0.01
    """CamVid proxy: a class is a label of an image covering more than this share of its labelled pixels."""
    max_train_rows: int | None = None
    top_losses: int = 8


TINY = Config(train=TrainConfig(progress=False), arch="simple_cnn", small_size=32, large_size=48,
              resize_method="squish", batch_size=8, large_batch_size=8, epochs_head=1, epochs_all=1, lr=1e-2,
              lr_low=1e-3, max_train_rows=32, top_losses=3)


def load_sources(config: Config) -> tuple[dict, tuple[str, ...]]:
    root = config.run.data_dir
    if root is None:
        raise InputError("--data-dir is required: Planet, planet_tiny, a folder with --csv, or CamVid (proxy)")
    if config.csv is None and camvid.find_layout(root) is not None:
        found = camvid_multilabel(root, config.min_share, config.valid_pct, config.train.seed)
        print(found.note)
        return found.sources, found.classes
    if config.csv is not None:
        items = read_multilabel_csv(root, config.csv, folder=config.folder, suffix=config.suffix,
                                    label_delim=config.label_delim)
    else:
        items = planet.planet_items(root)
    train, valid = items.split(config.valid_pct, config.train.seed)
    make = lambda part, name: ImageSource("files", part.paths, part.targets.astype(np.int32), items.classes, name)
    print(f"{root}: {len(items)} images, {len(items.classes)} labels; random {config.valid_pct:.0%} valid")
    return {"train": make(train, "train"), "valid": make(valid, "valid")}, items.classes


def make_data(sources: dict, config: Config, size: int, batch_size: int):
    return sources_databunch(sources["train"], sources["valid"], sources.get("test"), size=size,
                             batch_size=batch_size, tfms=PLANET_TFMS, resize_method=config.resize_method,
                             seed=config.train.seed)


def main(config: Config, workdir: Path) -> dict:
    sources, classes = load_sources(config)
    if config.max_train_rows is not None:
        train = sources["train"]
        n = min(config.max_train_rows, len(train))
        sources["train"] = dataclasses.replace(train, items=train.items[:n], labels=train.labels[:n])
    data = make_data(sources, config, config.small_size, config.batch_size)
    metrics = [accuracy_thresh(config.thresh, name="acc_thresh"), fbeta(2, config.thresh)]
    pretrained = config.pretrained or False
    learn = cnn_learner(data, config.arch, pretrained, metrics=metrics, loss=binary_cross_entropy,
                        config=config.train, workdir=workdir)
    for stage, (size, batch_size) in enumerate([(config.small_size, config.batch_size),
                                                (config.large_size, config.large_batch_size)]):
        if stage:
            learn.data = make_data(sources, config, size, batch_size)
            if pretrained:
                learn.freeze()
        print(f"== {size} px: fit_one_cycle({config.epochs_head}, slice({config.lr}))"
              + (" frozen" if pretrained else " (from scratch: all groups)"))
        learn.fit_one_cycle(config.epochs_head, slice(config.lr))
        learn.unfreeze()
        print(f"== {size} px, unfrozen: fit_one_cycle({config.epochs_all}, slice({config.lr_low}, {config.lr / 5}))")
        learn.fit_one_cycle(config.epochs_all, slice(config.lr_low, config.lr / 5))

    results = learn.evaluate_all()
    print_results(results)
    outputs, targets, _ = learn.get_preds()
    probs = 1.0 / (1.0 + np.exp(-outputs.astype(np.float64)))
    thresholds, tuned = best_thresholds(probs, targets)
    results["valid_fbeta_host"] = fbeta_score(probs, targets, config.thresh)
    results["valid_fbeta_tuned"] = tuned
    prevalence = np.asarray(sources["train"].labels, np.float64).mean(axis=0)
    results["valid_fbeta_constant"] = fbeta_score(np.tile(prevalence, (len(targets), 1)), targets, config.thresh)
    print(f"baseline: the same labels for every image (those on over {config.thresh:.0%} of training images): "
          f"fbeta {results['valid_fbeta_constant']:.4f}")
    print(f"valid fbeta at {config.thresh}: {results['valid_fbeta_host']:.4f}; with per-class thresholds tuned on "
          f"valid: {tuned:.4f} ({', '.join(f'{c} {t:.2f}' for c, t in zip(classes, thresholds))})")
    top = multilabel_top_losses(probs, targets, classes, config.top_losses, thresholds)
    for row in top:
        print(f"top loss: valid row {row.row} ({sources['valid'].items[row.row]}), loss {row.loss:.3f}, "
              f"predicted {' '.join(row.predicted) or '-'}, actual {' '.join(row.actual) or '-'}")
    write_json_atomic(workdir / "thresholds.json", {"classes": list(classes), "thresholds": thresholds.tolist(),
                                                    "top_losses": [dataclasses.asdict(r) for r in top]})
    print(f"results: {learn.show_results(workdir / 'show_results.png')}, {workdir / 'thresholds.json'}")
    print(f"export: {learn.export(workdir / 'export')}")
    return results


if __name__ == "__main__":
    experiment.run(main, Config(), TINY)
