"""Vision: image folders and tfds catalog datasets through a tf.data pipeline with fastai v1's
augmentations (folders, transforms, pipeline), cnn_learner, interpretation helpers.

Names are imported lazily (PEP 562) so that `import jaxfast.vision.predict_images` and the
like load only what they use."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "cnn_learner": "learner",
    "unet_learner": "learner",
    "interpret_to_pngs": "learner",
    "ImageSplit": "folders",
    "ImageSplits": "folders",
    "find_images": "folders",
    "random_split": "folders",
    "verify_images": "folders",
    "CATALOG": "pipeline",
    "ImageLoader": "pipeline",
    "ImageSource": "pipeline",
    "catalog_databunch": "pipeline",
    "compute_stats": "pipeline",
    "databunch_with_size": "pipeline",
    "image_databunch": "pipeline",
    "load_tfds_images": "pipeline",
    "measure_pipeline": "pipeline",
    "sources_databunch": "pipeline",
    "splits_databunch": "pipeline",
    "SegmentationSource": "segmentation",
    "SegmentationLoader": "segmentation",
    "PointSource": "segmentation",
    "PointLoader": "segmentation",
    "segmentation_databunch": "segmentation",
    "points_databunch": "segmentation",
    "camvid_sources": "segmentation",
    "camvid_databunch": "segmentation",
    "IMAGENET_STATS": "transforms",
    "NO_AUGMENTATION": "transforms",
    "TransformConfig": "transforms",
    "get_transforms": "transforms",
    "rand_pad": "transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jaxfast.vision' has no attribute {name!r}")
    return getattr(importlib.import_module(f"jaxfast.vision.{_EXPORTS[name]}"), name)
