"""fastai v1's one-liners: cnn_learner / tabular_learner / collab_learner / unet_learner build
the one Learner, learn, export without repeating the architecture, and load_learner predicts
single items; show_batch and show_results write PNGs."""

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import shared_dataset
from jaxfast import load_learner
from jaxfast.collab import collab_learner, generate_ratings, prepare
from jaxfast.data.loader import ArrayLoader, DataBunch
from jaxfast.errors import InputError
from jaxfast.export import load_export
from jaxfast.learner import TrainConfig
from jaxfast.tabular import TabularProcessor, TabularTarget, split_random, tabular_databunch, tabular_learner
from jaxfast.vision import cnn_learner, image_databunch, unet_learner

QUIET = TrainConfig(progress=False)


def is_png(path) -> bool:
    with Image.open(path) as image:
        return image.format == "PNG" and min(image.size) >= 100


@pytest.mark.slow
def test_fastai_three_liner_on_mnist_tiny_trains_exports_and_predicts(tmp_path):
    root = shared_dataset("mnist_tiny")
    data = image_databunch(root, size=28, batch_size=32, tfms=None, verify=False)
    learn = cnn_learner(data, "simple_cnn", pretrained=False, metrics=["accuracy"], config=QUIET, workdir=tmp_path)
    before = learn.validate()["accuracy"]
    learn.fit_one_cycle(1, 1e-2)
    after = learn.validate()["accuracy"]
    assert after > 0.85 and after > before + 0.2, (before, after)  # 3s vs 7s: chance is ~0.5
    path = learn.export(tmp_path / "export")
    assert is_png(data.show_batch(tmp_path / "batch.png")) and is_png(learn.show_results())
    seven = root / "valid" / "7" / sorted(os.listdir(root / "valid" / "7"))[0]
    label, index, probs = load_learner(path).predict(str(seven))
    assert label == data.train.classes[index] and probs.shape == (2,) and abs(probs.sum() - 1) < 1e-5
    assert label == "7"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError, match="bad.png"):
        load_learner(path).predict(str(bad))


def income_frame(n: int, seed: int) -> pd.DataFrame:
    """A tabular problem with a learnable rule: the class depends on a category and a number."""
    rng = np.random.default_rng(seed)
    job = rng.choice(["a", "b", "c"], n)
    age = rng.uniform(20, 60, n)
    rich = (job == "a") ^ (age > 40)
    return pd.DataFrame({"job": job, "age": age, "noise": rng.normal(size=n),
                         "salary": np.where(rich, ">=50k", "<50k")})


def test_tabular_learner_learns_exports_and_predicts_a_row(tmp_path):
    train, valid = split_random(income_frame(600, 0), 0.2, seed=0)
    processor = TabularProcessor(["job"], ["age", "noise"]).fit(train)
    target = TabularTarget("salary").fit(train)
    data = tabular_databunch(processor, target, train, valid, batch_size=32)
    learn = tabular_learner(data, layers=[32, 16], metrics=["accuracy"], config=QUIET)
    learn.fit_one_cycle(6, 2e-2)
    assert learn.validate()["accuracy"] > 0.85
    loaded = load_learner(learn.export(tmp_path / "export"))
    label, index, probs = loaded.predict({"job": "a", "age": 25.0, "noise": 0.1})
    assert (label, index) == (">=50k", target.classes.index(">=50k")) and probs[index] > 0.5
    assert loaded.predict(pd.Series({"job": "b", "age": 55.0, "noise": 0.0}))[0] == ">=50k"
    with pytest.raises(InputError, match="age"):
        loaded.predict({"job": "a", "noise": 0.1})
    with pytest.raises(InputError, match="not a number"):
        loaded.predict({"job": "a", "age": "old", "noise": 0.1})
    assert is_png(data.show_batch(tmp_path / "rows.png")) and is_png(learn.show_results(tmp_path / "results.png"))


def test_collab_learner_learns_and_predicts_a_pair(tmp_path):
    data = prepare(generate_ratings(seed=0), valid_pct=0.1, seed=42)
    bunch = data.bunch(64, seed=0)
    learn = collab_learner(bunch, n_factors=8, y_range=(0, 5.5), metrics=["mse"], config=QUIET)
    before = learn.validate()["mse"]
    learn.fit_one_cycle(3, 1e-2)
    assert learn.validate()["mse"] < 0.7 * before
    user, item = data.ratings.users[0], data.ratings.items[0]
    rating, _, _ = load_learner(learn.export(tmp_path / "export")).predict((user, item))
    assert 0.0 <= rating <= 5.5
    with pytest.raises(InputError):
        load_learner(tmp_path / "export").predict(("no such user", item))


def test_factories_refuse_data_of_another_kind():
    data = DataBunch(ArrayLoader(np.zeros((8, 2), np.float32), np.zeros(8, np.int32), 4))
    with pytest.raises(InputError, match="tabular_databunch"):
        tabular_learner(data)
    with pytest.raises(InputError, match="collab"):
        collab_learner(data)


def test_unet_learner_builds_groups_shows_and_exports(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 64, 64, 3)).astype(np.float32)
    masks = (images[..., 0] > 0).astype(np.int32)  # class = sign of the red channel

    class Loader(ArrayLoader):
        classes = ("neg", "pos")

    data = DataBunch(Loader(images, masks, 4, shuffle=True, drop_last=True), Loader(images, masks, 4))
    learn = unet_learner(data, "resnet18", pretrained=False, metrics=["accuracy"], config=QUIET)
    assert learn.n_groups == 3 and learn.n_frozen == 0  # random encoder: nothing frozen
    assert learn.predict(images[:3]).shape == (3, 64, 64, 2)  # (its learning: tests/test_unet.py)
    assert is_png(learn.show_results(tmp_path / "seg.png", rows=2))
    assert load_export(learn.export(tmp_path / "export")).meta["arch"] == "unet"
