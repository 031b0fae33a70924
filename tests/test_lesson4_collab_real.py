"""Lesson 4 on the real MovieLens 100k: fastai's full protocol reaches valid MSE <= 0.815
(fastai: 0.8147), and the interpretation finds the lesson's bad and good movies.

About 20-60 s on 2 CPU cores; skipped when ../shared/data/ml-100k is absent.
"""

import json

import numpy as np
import pytest
from conftest import shared_dataset

from experiments import lesson4_collab
from jaxfast import experiment
from jaxfast.collab.data import UnknownIdError, load_collab_export


@pytest.mark.slow
def test_lesson4_collab_protocol_on_ml100k(tmp_path, capsys):
    data_dir = shared_dataset("ml-100k")
    args = ["--data-dir", str(data_dir), "--workdir", str(tmp_path), "--train.no-progress"]
    final = experiment.run(lesson4_collab.main, lesson4_collab.Config(), lesson4_collab.TINY, args)
    out = capsys.readouterr().out
    assert "train 90,000 rows, valid 10,000 rows" in out and "1406 steps per epoch" in out
    assert final["valid_mse"] <= 0.815, out

    interp = json.loads((tmp_path / "embedding_dot_bias" / "interpretation.json").read_text())
    assert len(interp["items"]) == 1000 and len(interp["lowest_bias"]) == 15
    low = np.mean([mean for _, _, mean in interp["lowest_bias"]])
    high = np.mean([mean for _, _, mean in interp["highest_bias"]])
    assert low < 2.5 and high > 4.0, (low, high)
    assert "Shawshank Redemption, The (1994)" in [name for _, name, _ in interp["highest_bias"]]
    assert (tmp_path / "embedding_dot_bias" / "pca.png").stat().st_size > 50_000

    predictor = load_collab_export(tmp_path / "embedding_dot_bias" / "export")
    stars = predictor.predict(["196", "196"], ["Shawshank Redemption, The (1994)", "Bio-Dome (1996)"])
    assert 0 < stars[1] < stars[0] < 5.5
    with pytest.raises(UnknownIdError, match=r"user id\(s\).*row 0: '9999'"):
        predictor.predict(["9999"], ["Star Wars (1977)"])
