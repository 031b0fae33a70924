"""ClassificationInterpretation: confusion matrix and most_confused against hand counts,
top_losses order, images read back from a loader, PNG plots."""

import numpy as np
import pytest
from PIL import Image

from jaxfast.data.loader import ArrayLoader, DataBunch
from jaxfast.interpret import ClassificationInterpretation, denormalize, softmax
from jaxfast.learner import Learner, TrainConfig
from jaxfast.models.registry import build_model

CLASSES = ("cat", "dog", "fox")
#                 0  1  2  3  4  5  6  7  8  9
TARGETS = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
PREDS = np.array([0, 1, 1, 1, 0, 1, 2, 2, 1, 1])
LOSSES = np.array([0.1, 2.0, 1.5, 0.2, 3.0, 0.3, 1.5, 0.05, 0.7, 2.5], np.float32)


def interpretation(images=None) -> ClassificationInterpretation:
    logits = np.full((len(PREDS), 3), -2.0, np.float32)
    logits[np.arange(len(PREDS)), PREDS] = 2.0
    return ClassificationInterpretation.from_outputs(logits, TARGETS, LOSSES, images, CLASSES)


def test_confusion_matrix_and_most_confused_match_hand_counts():
    interp = interpretation()
    assert interp.preds.tolist() == PREDS.tolist()
    # rows actual, columns predicted, counted by hand from the table above
    assert interp.confusion_matrix().tolist() == [[1, 2, 0], [1, 2, 1], [0, 2, 1]]
    assert interp.most_confused() == [("cat", "dog", 2), ("fox", "dog", 2), ("dog", "cat", 1), ("dog", "fox", 1)]
    assert interp.most_confused(min_val=2) == [("cat", "dog", 2), ("fox", "dog", 2)]
    assert interp.confusion_matrix().sum() == len(TARGETS)


def test_confusion_matrix_of_random_predictions_matches_a_loop():
    rng = np.random.default_rng(0)
    logits, targets = rng.normal(size=(200, 5)), rng.integers(0, 5, 200)
    interp = ClassificationInterpretation.from_outputs(logits, targets, rng.random(200))
    expected = np.zeros((5, 5), int)
    for t, p in zip(targets, logits.argmax(1)):
        expected[t, p] += 1
    np.testing.assert_array_equal(interp.confusion_matrix(), expected)
    counts = [count for _, _, count in interp.most_confused()]
    assert counts == sorted(counts, reverse=True) and sum(counts) == 200 - np.trace(expected)
    np.testing.assert_allclose(interp.probs, np.exp(logits) / np.exp(logits).sum(1, keepdims=True), rtol=1e-5)


def test_top_losses_order():
    losses, rows = interpretation().top_losses(4)
    assert rows.tolist() == [4, 9, 1, 2] and losses.tolist() == pytest.approx([3.0, 2.5, 2.0, 1.5])
    assert interpretation().top_losses(3, largest=False)[1].tolist() == [7, 0, 3]
    assert len(interpretation().top_losses()[1]) == 10  # k=None: every row, 1.5 ties kept in row order
    assert interpretation().top_losses()[1].tolist()[3:5] == [2, 6]


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"targets \(9,\) and losses \(10,\) must both be \(10,\)"):
        ClassificationInterpretation.from_outputs(np.zeros((10, 3)), TARGETS[:9], LOSSES)
    with pytest.raises(ValueError, match="2 class names for 3 columns"):
        ClassificationInterpretation.from_outputs(np.zeros((10, 3)), TARGETS, LOSSES, classes=("a", "b"))
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\), got range \[0, 3\]"):
        ClassificationInterpretation.from_outputs(np.zeros((10, 3)), np.r_[TARGETS[:9], 3], LOSSES)


def png_size(path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_plots_are_written(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (10, 12, 12, 3), dtype=np.uint8)
    interp = interpretation(images)
    width, height = png_size(interp.plot_top_losses(5, tmp_path / "top.png", ncols=3))
    assert width > height > 0  # 2 rows of 3
    png_size(interp.plot_confusion_matrix(tmp_path / "cm.png"))
    png_size(interp.plot_confusion_matrix(tmp_path / "cm_norm.png", normalize=True))
    with pytest.raises(ValueError, match="no images"):
        interpretation().plot_top_losses(3, tmp_path / "none.png")


def test_from_learner_reads_the_shown_images_back_from_the_loader(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(11, 16, 16, 3)).astype(np.float32)  # 11 rows: the last batch is padded
    y = rng.integers(0, 3, 11).astype(np.int32)
    model = build_model("cnn", {"body_arch": "simple_cnn", "n_classes": 3, "lin_ftrs": (8,),
                                "body_config": {"features": (8, 8)}})
    data = DataBunch(ArrayLoader(x, y, 4, shuffle=True, drop_last=True), ArrayLoader(x, y, 4))
    learn = Learner(model, data, config=TrainConfig(progress=False), log=lambda s: None)
    stats = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    interp = ClassificationInterpretation.from_learner(learn, classes=CLASSES, stats=stats)
    outputs, _, losses = learn.get_preds()
    np.testing.assert_allclose(interp.probs, softmax(outputs), rtol=1e-6)
    assert interp.targets.tolist() == y.tolist() and interp.losses.tolist() == losses.tolist()
    _, rows = interp.top_losses(3)
    np.testing.assert_array_equal(interp.images_at(rows), x[rows])
    np.testing.assert_array_equal(interp.images_at([10, 0]), x[[10, 0]])
    with pytest.raises(IndexError, match=r"rows \[11\] are beyond the loader's 11 rows"):
        interp.images_at([11])
    np.testing.assert_allclose(denormalize(x[:1], stats), np.clip(x[:1] * 0.25 + 0.5, 0, 1))
    png_size(interp.plot_top_losses(4, tmp_path / "top.png", ncols=2))
