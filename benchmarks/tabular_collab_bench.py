"""Lesson 4's small models, jaxfast vs PyTorch eager: TabularModel and EmbeddingDotBias steps.

Tabular: the Adult shape (7 categorical columns with the lesson's cardinalities, 3
continuous, layers [200, 100], 2 classes, bs 64). Collab: EmbeddingDotBias on MovieLens
100k's shape (944 users, 1665 titles, 40 factors, y_range (0, 5.5), MSE, wd 0.1, bs 64).
Both use AdamW; these steps are dominated by per-step overhead, not arithmetic.
Run: python benchmarks/tabular_collab_bench.py [--steps 200]
"""

from __future__ import annotations

import argparse

import numpy as np

import common  # noqa: F401 - puts the repository on sys.path
from common import import_torch, jaxfast_step, medians_and_best, load_average, markdown_table, row, timed_first

# Adult: workclass, education, marital-status, occupation, relationship, race, education-num_na ('#na#' included)
ADULT_CATS = (10, 17, 8, 16, 7, 6, 3)
N_CONT, BS = 3, 64
N_USERS, N_ITEMS, N_FACTORS = 944, 1665, 40


def tabular(n_steps: int, torch) -> dict:
    from jaxfast.models.tabular import emb_sz_rule, tabular as build

    emb_szs = [(n, emb_sz_rule(n)) for n in ADULT_CATS]
    rng = np.random.default_rng(0)
    x_cat = np.stack([rng.integers(0, n, BS) for n in ADULT_CATS], 1).astype(np.int32)
    x_cont = rng.standard_normal((BS, N_CONT)).astype(np.float32)
    y = rng.integers(0, 2, BS).astype(np.int32)
    jstep, compile_s, n_flops = jaxfast_step(build(emb_szs, N_CONT, 2, (200, 100)), (x_cat, x_cont), y, lr=1e-2)
    fns, tfirst = {"jax": jstep}, None
    if torch is not None:
        import torch_reference as tr

        tstep = tr.train_step(tr.TabularModel(emb_szs, N_CONT, 2), torch.nn.functional.cross_entropy,
                              (torch.from_numpy(x_cat.astype(np.int64)), torch.from_numpy(x_cont)),
                              torch.from_numpy(y.astype(np.int64)), lr=1e-2)
        tfirst = timed_first(tstep)
        fns["torch"] = tstep
    med, best = medians_and_best(fns, n_steps, warmup=10)
    return row("tabular_adult", med, best, compile_s, n_flops, tfirst)


def collab(n_steps: int, torch) -> dict:
    from jaxfast.models.collab import embedding_dot_bias

    rng = np.random.default_rng(0)
    users = rng.integers(0, N_USERS, BS).astype(np.int32)
    items = rng.integers(0, N_ITEMS, BS).astype(np.int32)
    ratings = rng.uniform(0.5, 5.0, BS).astype(np.float32)
    model = embedding_dot_bias(N_USERS, N_ITEMS, N_FACTORS, (0.0, 5.5))
    jstep, compile_s, n_flops = jaxfast_step(model, (users, items), ratings, "mse", lr=5e-3, wd=0.1, eps=1e-8)
    fns, tfirst = {"jax": jstep}, None
    if torch is not None:
        import torch_reference as tr

        tstep = tr.train_step(tr.EmbeddingDotBias(N_USERS, N_ITEMS, N_FACTORS), torch.nn.functional.mse_loss,
                              (torch.from_numpy(users.astype(np.int64)), torch.from_numpy(items.astype(np.int64))),
                              torch.from_numpy(ratings), lr=5e-3, wd=0.1, eps=1e-8)
        tfirst = timed_first(tstep)
        fns["torch"] = tstep
    med, best = medians_and_best(fns, n_steps, warmup=10)
    return row("collab_embedding_dot_bias", med, best, compile_s, n_flops, tfirst)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    torch = import_torch()
    rows = [tabular(args.steps, torch), collab(args.steps, torch)]
    print(f"tabular and collab train steps, load {load_average()}")
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
