"""Vision data: image folders and tfds catalog datasets through a tf.data pipeline with
fastai v1's augmentations (see folders, transforms, pipeline)."""

from jaxfast.vision.folders import (
    ImageSplit,
    ImageSplits,
    find_images,
    random_split,
    verify_images,
)
from jaxfast.vision.pipeline import (
    CATALOG,
    ImageLoader,
    ImageSource,
    catalog_databunch,
    compute_stats,
    databunch_with_size,
    image_databunch,
    load_tfds_images,
    measure_pipeline,
    sources_databunch,
    splits_databunch,
)
from jaxfast.vision.transforms import (
    IMAGENET_STATS,
    NO_AUGMENTATION,
    TransformConfig,
    get_transforms,
)

__all__ = [
    "CATALOG",
    "IMAGENET_STATS",
    "NO_AUGMENTATION",
    "ImageLoader",
    "ImageSource",
    "ImageSplit",
    "ImageSplits",
    "TransformConfig",
    "catalog_databunch",
    "compute_stats",
    "databunch_with_size",
    "find_images",
    "get_transforms",
    "image_databunch",
    "load_tfds_images",
    "measure_pipeline",
    "random_split",
    "sources_databunch",
    "splits_databunch",
    "verify_images",
]
