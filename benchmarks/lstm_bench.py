"""AWD-LSTM-shaped LM and classifier train steps, jaxfast vs PyTorch eager (nn.LSTM).

Shape: embedding 400, 3 LSTM layers 400->256->256->400, T 70, bs 32, vocab 10k, dropout
0.1 after each layer, decoder tied (or not) to the embedding; the classifier puts fastai's
PoolingLinearClassifier ([last, max, mean] -> BN/50/ReLU -> BN/2) on the same encoder.
jaxfast's recurrent layers: `--cell fused` (default) is jaxfast.models.rnn.FusedLSTM (input
projection of all steps in one matmul, scan of the recurrent matmul with fused gates,
hand-written backward; checked equal to the flax cell first); `--cell flax` is
nn.RNN(OptimizedLSTMCell), Flax's own cell.
GFLOP/s counts the matmuls (XLA's cost analysis counts a loop body once).
`awd_lstm_3_layers_fwd_bwd` times the three recurrent layers alone (FusedLSTM vs nn.LSTM;
with `--cell fused` only).
Run: python benchmarks/lstm_bench.py [--steps 15] [--cell flax] [--unroll 2] [--only layers]
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import common  # noqa: F401 - puts the repository on sys.path
from jaxfast.models.rnn import FusedLSTM, per_token
from common import import_torch, jaxfast_step, medians_and_best, load_average, markdown_table, row, timed_first

VOCAB, EMB, HIDDEN, LAYERS, T, BS = 10_000, 400, 256, 3, 70, 32


def lstm_layer(features: int, cell: str, unroll: int, name: str) -> nn.Module:
    if cell == "flax":
        return nn.RNN(nn.OptimizedLSTMCell(features), unroll=unroll, name=name)
    return FusedLSTM(features, unroll, name=name)


def check_fused_equals_flax() -> None:
    """FusedLSTM and nn.RNN(OptimizedLSTMCell) with the same weights: equal outputs and gradients."""
    x = jax.random.normal(jax.random.key(0), (3, 7, 5))
    ct = jax.random.normal(jax.random.key(2), (3, 7, 4))
    fused, ref = FusedLSTM(4), nn.RNN(nn.OptimizedLSTMCell(4))
    rp = ref.init(jax.random.key(1), x)
    cell = rp["params"]["cell"]
    cell = {k: {**v, "bias": v["bias"] + 0.1} if "bias" in v else v for k, v in cell.items()}
    rp = {"params": {"cell": cell}}
    fp = {"params": {"kernel_ih": jnp.concatenate([cell["i" + g]["kernel"] for g in "ifgo"], 1),
                     "kernel_hh": jnp.concatenate([cell["h" + g]["kernel"] for g in "ifgo"], 1),
                     "bias": jnp.concatenate([cell["h" + g]["bias"] for g in "ifgo"])}}
    loss = lambda m: lambda p, x: jnp.sum(m.apply(p, x) * ct)
    (gf, gfx), (gr, grx) = (jax.grad(loss(m), argnums=(0, 1))(p, x) for m, p in ((fused, fp), (ref, rp)))
    np.testing.assert_allclose(fused.apply(fp, x), ref.apply(rp, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gfx, grx, rtol=1e-5, atol=1e-6)
    gc = gr["params"]["cell"]
    for name, prefix, key in (("kernel_ih", "i", "kernel"), ("kernel_hh", "h", "kernel"), ("bias", "h", "bias")):
        want = jnp.concatenate([gc[prefix + g][key] for g in "ifgo"], -1)
        np.testing.assert_allclose(gf["params"][name], want, rtol=1e-5, atol=1e-6)


class LstmLM(nn.Module):
    """Embedding -> LSTMs (emb -> hidden ... -> emb) with dropout -> decoder (tied) or classifier."""

    cell: str = "flax"
    unroll: int = 1
    tied: bool = True
    n_classes: int | None = None  # set: fastai's pooling classifier head instead of the decoder
    dropout: float = 0.1

    @nn.compact
    def __call__(self, tokens, train: bool = False):
        embed = nn.Embed(VOCAB, EMB, name="embedding")
        x = embed(tokens)
        for i, width in enumerate([HIDDEN] * (LAYERS - 1) + [EMB]):
            x = lstm_layer(width, self.cell, self.unroll, f"rnn_{i}")(x)
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        if self.n_classes is None:
            if self.tied:
                bias = self.param("decoder_bias", nn.initializers.zeros, (VOCAB,))
                return per_token(lambda rows: embed.attend(rows) + bias, x)
            return per_token(nn.Dense(VOCAB, name="decoder"), x)
        x = jnp.concatenate([x[:, -1], x.max(1), x.mean(1)], axis=-1)
        for i, (width, p) in enumerate(((50, 0.4), (self.n_classes, 0.1))):
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=f"bn_{i}")(x)
            x = nn.Dropout(p, deterministic=not train)(x)
            x = nn.Dense(width, name=f"lin_{i}")(x)
            if i == 0:
                x = nn.relu(x)
        return x


def model_flops(classifier: bool) -> float:
    """fwd + bwd (x3) matmul flops: the LSTM layers, plus the decoder for the LM."""
    sizes = [EMB] + [HIDDEN] * (LAYERS - 1) + [EMB]
    lstm = sum(2 * BS * T * (sizes[i] + sizes[i + 1]) * 4 * sizes[i + 1] for i in range(LAYERS))
    return 3.0 * (lstm + (0 if classifier else 2 * BS * T * EMB * VOCAB))


def bench(name: str, n_steps: int, torch, cell: str, unroll: int, tied: bool = True, classifier: bool = False):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, (BS, T)).astype(np.int32)
    targets = rng.integers(0, 2, BS).astype(np.int32) if classifier else rng.integers(0, VOCAB, (BS, T)).astype(np.int32)
    model = LstmLM(cell, unroll, tied, 2 if classifier else None)
    jstep, compile_s, _ = jaxfast_step(model, tokens, targets)  # XLA counts a scan's body once: count here
    fns, tfirst = {"jax": jstep}, None
    if torch is not None:
        import torch_reference as tr

        torch.manual_seed(0)
        tmodel = tr.LstmClassifier() if classifier else tr.LstmLM(tied=tied)
        loss = torch.nn.functional.cross_entropy if classifier else tr.lm_loss
        tstep = tr.train_step(tmodel, loss, (torch.from_numpy(tokens.astype(np.int64)),),
                              torch.from_numpy(targets.astype(np.int64)), lr=1e-3)
        tfirst = timed_first(tstep)
        fns["torch"] = tstep
    med, best = medians_and_best(fns, n_steps)
    return row(name, med, best, compile_s, model_flops(classifier), tfirst)


def bench_layers(n_steps: int, torch, unroll: int) -> dict:
    """The three LSTM layers alone, fwd + bwd of a fixed projection of the last layer's output,
    no optimizer: FusedLSTM vs nn.LSTM (oneDNN's fused RNN), to locate the LM step's gap."""
    from common import compile_step
    from jaxfast.models.rnn import lstm_scan

    sizes = [EMB] + [HIDDEN] * (LAYERS - 1) + [EMB]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, BS, EMB)).astype(np.float32)  # time-major, as nn.LSTM takes it
    cotangent = rng.standard_normal((T, BS, EMB)).astype(np.float32)
    weights = [tuple(rng.uniform(-0.06, 0.06, shape).astype(np.float32)
                     for shape in ((sizes[i], 4 * sizes[i + 1]), (sizes[i + 1], 4 * sizes[i + 1]), (4 * sizes[i + 1],)))
               for i in range(LAYERS)]

    def loss(weights, x):
        for w_ih, w_hh, bias in weights:
            x = lstm_scan(x, w_ih, w_hh, bias, unroll)
        return jnp.sum(x * cotangent)

    args = (jax.device_put(weights), jax.device_put(x))
    compiled, compile_s, _ = compile_step(jax.jit(jax.grad(loss, argnums=(0, 1))), *args)
    fns, tfirst = {"jax": lambda: jax.block_until_ready(compiled(*args))}, None
    if torch is not None:
        torch.manual_seed(0)
        layers = [torch.nn.LSTM(sizes[i], sizes[i + 1]) for i in range(LAYERS)]
        tx, tct = torch.from_numpy(x).requires_grad_(), torch.from_numpy(cotangent)

        def tstep():
            tx.grad = None
            for layer in layers:
                layer.zero_grad(set_to_none=True)
            h = tx
            for layer in layers:
                h = layer(h)[0]
            (h * tct).sum().backward()

        tfirst = timed_first(tstep)
        fns["torch"] = tstep
    med, best = medians_and_best(fns, n_steps)
    return row("awd_lstm_3_layers_fwd_bwd", med, best, compile_s, model_flops(classifier=True), tfirst)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--cell", choices=["flax", "fused"], default="fused")
    parser.add_argument("--unroll", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="lm_tied lm_untied classifier layers")
    args = parser.parse_args(argv)
    check_fused_equals_flax()
    torch = import_torch()
    rows = []
    for name, kw in (("lm_tied", {}), ("lm_untied", {"tied": False}), ("classifier", {"classifier": True})):
        if args.only and name not in args.only:
            continue
        rows.append(bench(f"awd_lstm_{name}", args.steps, torch, args.cell, args.unroll, **kw))
        print(markdown_table(rows[-1:]).splitlines()[-1], f"(load {load_average()})", flush=True)
    if args.cell == "fused" and (not args.only or "layers" in args.only):
        rows.append(bench_layers(args.steps, torch, args.unroll))
        print(markdown_table(rows[-1:]).splitlines()[-1], f"(load {load_average()})", flush=True)
    print(f"\nLSTM train steps (cell {args.cell}, unroll {args.unroll}), load {load_average()}")
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
