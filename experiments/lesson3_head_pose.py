"""Lesson 3 (head pose): regress one point, the centre of a face, with a cnn and MSE.

fastai: BIWI head pose, images at (120, 160), the point transformed with the image
(`tfm_y=True`) and scaled to [-1, 1], cnn_learner(resnet34) with MSELossFlat,
`fit_one_cycle(5, slice(2e-2))`: MSE 0.0028 on recording 13. Here the cnn (fastai's head, 2
outputs per point) is trained from scratch unless --pretrained is given; the baseline is
the MSE of always predicting the mean training point.

Data (--data-dir): fastai's biwi_head_pose (recordings 01 ... 24; 13 is valid, as the
lesson), or a CamVid folder, the proxy used here (no BIWI data on this machine): the point
is the centroid of one class's pixels (`--proxy-class`, e.g. Sky or Road), CamVid's own
splits kept, images with fewer than `--min-pixels` of that class left out.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np

from jaxfast import experiment
from jaxfast.datasets import biwi, camvid
from jaxfast.errors import InputError
from jaxfast.experiment import Run, RunConfig, print_results
from jaxfast.learner import Learner, TrainConfig
from jaxfast.models.heads import cnn_layer_groups
from jaxfast.vision import get_transforms
from jaxfast.vision.learner import cnn_spec, image_meta, load_body
from jaxfast.vision.proxies import camvid_centroids
from jaxfast.vision.seg_interpret import show_point_results
from jaxfast.vision.segmentation import PointSource, points_databunch


@dataclasses.dataclass(frozen=True)
class Config:
    """Lesson 3: head-pose point regression (resnet34, (120, 160), fit_one_cycle(5, 2e-2), MSE).

    --data-dir: fastai's biwi_head_pose (01 ... 24) or CamVid (proxy: a class's centroid)."""

    run: Run = RunConfig()
    train: TrainConfig = TrainConfig()
    arch: str = "resnet34"
    pretrained: str | None = None
    """ImageNet weights of the body: a name or a .pth/.safetensors file; absent: from scratch, all groups trained."""
    size: tuple[int, int] = (120, 160)
    resize_method: Literal["crop", "squish", "pad"] = "crop"
    batch_size: int = 64
    epochs: int = 5
    lr: float = 2e-2
    ps: float = 0.5
    """Dropout of the cnn head (fastai's 0.5; a from-scratch regression trains steadier with 0)."""
    proxy_class: str = "Sky"
    """CamVid proxy: the class whose pixel centroid is the point."""
    min_pixels: int = 500
    own_calibration: bool = False
    """BIWI: project with each recording's rgb.cal instead of the lesson's 01/rgb.cal."""
    max_train_rows: int | None = None


TINY = Config(train=TrainConfig(progress=False), arch="simple_cnn", size=(48, 64), batch_size=8, epochs=2, lr=1e-2,
              max_train_rows=32)


def load_sources(config: Config) -> dict[str, PointSource]:
    root = config.run.data_dir
    if root is None:
        raise InputError("--data-dir is required: fastai's biwi_head_pose folder, or CamVid (proxy)")
    if camvid.find_layout(root) is not None:
        found = camvid_centroids(root, config.proxy_class, config.min_pixels, seed=config.train.seed)
        print(found.note)
        return found.sources
    frames = biwi.read_biwi(root, config.own_calibration)
    make = lambda rows, name: PointSource("files", np.array([f.image for f in rows], dtype=str),
                                          np.stack([f.point for f in rows])[:, None, :], name)
    valid = [f for f in frames if f.person == biwi.VALID_PERSON]
    train = [f for f in frames if f.person != biwi.VALID_PERSON]
    if not valid or not train:
        raise InputError(f"{root}: the lesson's split needs recording {biwi.VALID_PERSON} (valid) and others (train)")
    print(f"BIWI at {root}: {len(train)} train frames, {len(valid)} valid (recording {biwi.VALID_PERSON})")
    return {"train": make(train, "train"), "valid": make(valid, "valid")}


def mean_point_mse(data) -> dict:
    """MSE of predicting the mean training point (unaugmented targets) on each eval split."""
    plain = dataclasses.replace(data.train, tfms=None, shuffle=False, drop_last=False)
    targets = lambda loader: np.concatenate([b["targets"][b["mask"] > 0] for b in loader.batches(0)])
    mean = targets(plain).mean(axis=0)
    return {split: float(np.mean((targets(loader) - mean) ** 2)) for split, loader in data.eval_splits().items()}


def main(config: Config, workdir: Path) -> dict:
    sources = load_sources(config)
    if config.max_train_rows is not None:
        train = sources["train"]
        n = min(config.max_train_rows, len(train))
        sources["train"] = dataclasses.replace(train, items=train.items[:n], points=train.points[:n])
    data = points_databunch(sources["train"], sources.get("valid"), sources.get("test"), size=tuple(config.size),
                            batch_size=config.batch_size, tfms=get_transforms(), resize_method=config.resize_method,
                            seed=config.train.seed)
    n_outputs = sources["train"].points.shape[1] * 2
    spec = cnn_spec(config.arch, n_outputs, ps=config.ps)
    meta = image_meta(data, kind="points")
    learn = Learner(spec, data, "mse", ["mse"], layer_groups=cnn_layer_groups(spec.build()), config=config.train,
                    workdir=workdir, export_meta=meta)
    pretrained = config.pretrained or False
    if load_body(learn, config.arch, pretrained, print):
        learn.freeze()
    print(f"== fit_one_cycle({config.epochs}, slice({config.lr}))" + (" frozen" if pretrained else " all groups"))
    learn.fit_one_cycle(config.epochs, slice(config.lr))
    results = learn.evaluate_all()
    print_results(results)
    for split, value in mean_point_mse(data).items():
        results[f"{split}_mean_point_mse"] = value
        print(f"{split}: mse {results[f'{split}_mse']:.4f} vs {value:.4f} predicting the mean training point")
    print(f"results: {show_point_results(learn, data.valid, workdir / 'show_results.png')}")
    print(f"export: {learn.export(workdir / 'export')}")
    return results


if __name__ == "__main__":
    experiment.run(main, Config(), TINY)
