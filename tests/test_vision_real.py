"""Vision lessons on the real data in ../shared/data, trained from scratch on the CPU:

- lesson 1's MNIST sample (3s vs 7s, 12,396 / 2,038 images): resnet18 + fastai's head,
  one epoch of fit_one_cycle, >= 0.99 valid accuracy (fastai: 2 epochs on a pretrained body);
- lesson 7's ResNet on the 8,000 / 2,000 split of MNIST's 10k test images, the lesson's
  fit_one_cycle(12, 0.05): >= 0.98 (fastai: 0.9952 on the 60k / 10k split).

Skipped, with the reason, when the data are absent; about 3 minutes on 2 CPU cores.
"""

import json

import pytest
from conftest import shared_dataset

from experiments import lesson1_mnist_sample, lesson7_resnet_mnist
from jaxfast import experiment


@pytest.mark.slow
def test_mnist_sample_from_scratch_in_one_epoch(tmp_path, capsys):
    data_dir = shared_dataset("mnist_sample")
    lesson = lesson1_mnist_sample
    args = ["--data-dir", str(data_dir), "--workdir", str(tmp_path), "--epochs", "1", "--train.no-progress"]
    final = experiment.run(lesson.main, lesson.Config(), lesson.TINY, args)
    out = capsys.readouterr().out
    assert "12,396 train / 2,038 valid" in out and "resnet18: no --pretrained weights given" in out
    assert "fit_one_cycle(1, 0.01), all groups" in out
    assert final["valid_accuracy"] >= 0.99, out
    assert (tmp_path / "top_losses.png").is_file() and (tmp_path / "confusion_matrix.png").is_file()


@pytest.mark.slow
def test_lesson7_resnet_mnist_on_the_8k_2k_split(tmp_path, capsys):
    data_dir = shared_dataset("mnist")
    lesson = lesson7_resnet_mnist
    args = ["--data-dir", str(data_dir), "--workdir", str(tmp_path), "--train.no-progress"]
    final = experiment.run(lesson.main, lesson.Config(), lesson.TINY, args)
    out = capsys.readouterr().out
    assert "8,000 train / 2,000 valid" in out and "fit_one_cycle(12, 0.05)" in out
    assert final["valid_accuracy"] >= 0.98, out
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert history["final"] == final and (tmp_path / "top_losses.png").is_file()
