"""Lesson 4 (collab): EmbeddingDotBias on MovieLens 100k with fit_one_cycle, then its item
biases and the PCA of its item factors.

fastai's protocol: valid_pct 0.1 (seed 42), items by title, n_factors 40, y_range (0, 5.5),
wd 0.1, fit_one_cycle(5, 5e-3) at bs 64; fastai reached valid MSE 0.8147.
Data: tfds `movielens/100k-ratings` when online, or --data-dir with ml-100k's u.data and
u.item, or fastai's ml_sample ratings.csv. The tiny variant trains on generated ratings.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from jaxfast import experiment
from jaxfast.collab import CollabData, collab_learner, generate_ratings, load_collab_export, load_ratings, prepare
from jaxfast.collab.interpret import format_report, interpret, plot_pca
from jaxfast.distributed import is_primary
from jaxfast.errors import InputError
from jaxfast.experiment import Run, RunConfig
from jaxfast.learner import TrainConfig

MODELS = ("embedding_dot_bias", "embedding_nn")


@dataclasses.dataclass(frozen=True)
class Config:
    """Lesson 4: collaborative filtering on MovieLens 100k (EmbeddingDotBias, optionally EmbeddingNN).

    --data-dir: a folder with ml-100k's u.data + u.item, or ml_sample's ratings.csv; without it, tfds (needs the
    network)."""

    run: Run = RunConfig()
    train: TrainConfig = TrainConfig(wd=0.1, eps=1e-8)
    """The loop's settings: fastai's wd 0.1, and PyTorch's Adam epsilon 1e-8 that fastai v1's collab_learner used."""
    synthetic: bool = False
    """Without --data-dir, train on generated ratings instead of tfds (the tiny variant does)."""
    item_key: str = "title"
    """ml-100k items by 'title' (the lesson; duplicate titles merge) or by movie 'id'."""
    models: tuple[str, ...] = ("embedding_dot_bias",)
    """Any of embedding_dot_bias, embedding_nn, trained in this order."""
    valid_pct: float = 0.1
    split_seed: int = 42
    n_factors: int = 40
    y_range: tuple[float, float] = (0.0, 5.5)
    nn_layers: tuple[int, ...] = (256, 128)
    """EmbeddingNN hidden layers (its embedding sizes follow fastai's emb_sz_rule)."""
    batch_size: int = 64
    epochs: int = 5
    lr: float = 5e-3
    top_n: int = 1000
    """Interpretation lists only the top_n most-rated items, as the lesson does."""
    n_show: int = 15


TINY = Config(
    train=TrainConfig(wd=0.1, eps=1e-8, progress=False), synthetic=True, models=MODELS, nn_layers=(32,), n_factors=8,
    batch_size=32, epochs=3, lr=1e-2, top_n=60, n_show=5,
)


def make_data(config: Config) -> CollabData:
    if config.run.data_dir is None and config.synthetic:
        ratings = generate_ratings(seed=config.train.seed)
    else:
        ratings = load_ratings(config.run.data_dir, config.item_key)
    return prepare(ratings, config.valid_pct, config.split_seed)


def main(config: Config, workdir: Path) -> dict:
    data = make_data(config)
    print(data.ratings.note)
    print(f"train {data.train_idx.size:,} rows, valid {data.valid_idx.size:,} rows (valid_pct {config.valid_pct}, "
          f"seed {config.split_seed}); {len(data.users) - 1:,} users, {len(data.items) - 1:,} items in training; "
          f"{data.n_valid_unknown} valid rows have an id training never saw ('#na#', as fastai)")
    bunch = data.bunch(config.batch_size, config.train.seed)
    final = {}
    for name in config.models:
        if name not in MODELS:
            raise InputError(f"unknown model {name!r} in --models; choose from {', '.join(MODELS)}")
        out = workdir / name
        learn = collab_learner(bunch, config.n_factors, config.y_range, use_nn=name == "embedding_nn",
                               layers=config.nn_layers, metrics=["mse"], config=config.train, workdir=out)
        print(f"== {name} ({len(bunch.train)} steps per epoch)")
        learn.fit_one_cycle(config.epochs, config.lr)
        results = learn.evaluate_all()
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
        final.update({f"{name}_{k}": v for k, v in results.items()})
        learn.export(out / "export")
        load_collab_export(out / "export")  # the export must load back with its id maps
        if name == "embedding_dot_bias":
            explain(learn.state.params, data, config, out)
    first = "embedding_dot_bias" if "embedding_dot_bias" in config.models else config.models[-1]
    final["valid_mse"] = final[f"{first}_valid_mse"]
    return final


def explain(params, data: CollabData, config: Config, out: Path) -> None:
    """Print and save (interpretation.json, pca.png) the lesson's bias and PCA lists."""
    interp = interpret(params, data, config.top_n, config.n_show, min(10, config.n_show))
    print(format_report(interp))
    if is_primary():  # one writer under several processes (save_figure already is one)
        (out / "interpretation.json").write_text(json.dumps(interp.to_json(), indent=1))
    plot_pca(interp, out / "pca.png")
    print(f"interpretation: {out / 'interpretation.json'}, {out / 'pca.png'}")


if __name__ == "__main__":
    experiment.run(main, Config(), TINY)
