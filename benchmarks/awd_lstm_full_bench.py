"""The full-size AWD-LSTM (fastai v1's ULMFiT) train steps, jaxfast vs PyTorch eager.

Models as fastai v1 builds them: embedding 400, 3 LSTM layers of 1152 hidden (the last back
to 400), the five dropouts at fastai's configs (LM: awd_lstm_lm_config, classifier:
awd_lstm_clas_config), DropConnect on each hidden-to-hidden matrix, tied decoder.
jaxfast: `jaxfast.models.awd_lstm` (awd_lstm_lm / awd_lstm_clas), stepped as the Learner
steps them (the LM's hidden state carried in the TrainState, fastai's layer groups);
PyTorch: benchmarks/torch_awd_lstm_train.py (tests/torch_awd_lstm.py's twin with fastai's
training-mode dropouts), its hidden state carried and detached between calls as fastai does.
- `awd_lstm_full_lm`: bptt 70, bs 64 (fastai v1's defaults), vocab 60,000 (fastai's max),
  token cross entropy over every position (AR/TAR off on both sides).
- `awd_lstm_full_classifier`: documents of --doc-len tokens (rows 80-100 % of it, padded
  first), bs 32, through MultiBatchEncoder in bptt-70 chunks (hidden detached between
  chunks), concat pooling over the non-pad positions, PoolingLinearClassifier [1200, 50, 2].
Optimizer both sides: AdamW lr 1e-3, wd 1e-2 (none on BatchNorm and biases), betas (0.9,
0.99), eps 1e-5. GFLOP/s counts the matmuls (XLA's cost analysis counts a loop body once).
Run: python benchmarks/awd_lstm_full_bench.py [--steps 5] [--vocab 60000] [--only lm classifier]
"""

from __future__ import annotations

import argparse

import numpy as np

import common  # noqa: F401 - puts the repository on sys.path
from common import import_torch, jaxfast_step, load_average, markdown_table, medians_and_best, row, timed_first

EMB, HIDDEN, LAYERS, BPTT, PAD = 400, 1152, 3, 70, 1


def lstm_flops_per_token() -> float:
    """Forward matmul flops of the three LSTM layers for one token."""
    sizes = [EMB, HIDDEN, HIDDEN, EMB]
    return sum(2 * (sizes[i] + sizes[i + 1]) * 4 * sizes[i + 1] for i in range(LAYERS))


def lm_batch(vocab: int, bs: int, rng) -> tuple[dict, dict]:
    """One LM batch in the step's layout (as jaxfast.text.learner.lm_batch makes it)."""
    tokens = rng.integers(PAD + 1, vocab, (bs, BPTT + 1)).astype(np.int32)
    inputs = {"tokens": tokens[:, :-1], "reset": np.zeros(bs, np.float32), "token_mask": np.ones((bs, BPTT), np.float32)}
    return inputs, {"ids": tokens[:, 1:], "weights": np.ones((bs, BPTT), np.float32)}


def bench_lm(n_steps: int, torch, vocab: int, bs: int) -> dict:
    from jaxfast.models.awd_lstm import awd_lstm_lm, lm_layer_groups

    inputs, targets = lm_batch(vocab, bs, np.random.default_rng(0))
    model = awd_lstm_lm(vocab, pad_token=PAD)
    groups = lm_layer_groups(model)
    jstep, compile_s, _ = jaxfast_step(model, inputs, targets, "lm_cross_entropy", group_of_path=groups.group_of_path,
                                       n_groups=groups.n_groups)
    fns, tfirst = {"jax": jstep}, None
    if torch is not None:
        import torch_awd_lstm_train as tt
        import torch_reference as tr

        torch.manual_seed(0)
        tstep = tr.train_step(tt.language_model(vocab, pad_token=PAD), tr.lm_loss,
                              (torch.from_numpy(inputs["tokens"].astype(np.int64)),),
                              torch.from_numpy(targets["ids"].astype(np.int64)), lr=1e-3)
        tfirst = timed_first(tstep)
        fns["torch"] = tstep
    med, best = medians_and_best(fns, n_steps, warmup=1)
    n_flops = 3.0 * bs * BPTT * (lstm_flops_per_token() + 2 * EMB * vocab)
    return row(f"awd_lstm_full_lm_v{vocab // 1000}k_bs{bs}", med, best, compile_s, n_flops, tfirst)


def classifier_batch(vocab: int, bs: int, doc_len: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Documents of 80-100 % of `doc_len` tokens, padded first (fastai's pad_first), 2 classes."""
    tokens = rng.integers(PAD + 1, vocab, (bs, doc_len)).astype(np.int32)
    for r, length in enumerate(rng.integers(int(0.8 * doc_len), doc_len + 1, bs)):
        tokens[r, : doc_len - length] = PAD
    tokens[0, 0] = PAD + 1  # the batch's longest row is unpadded, as a sortish batch's first
    return tokens, rng.integers(0, 2, bs).astype(np.int32)


def bench_classifier(n_steps: int, torch, vocab: int, bs: int, doc_len: int) -> dict:
    from jaxfast.models.awd_lstm import awd_lstm_clas, clas_layer_groups

    tokens, targets = classifier_batch(vocab, bs, doc_len, np.random.default_rng(0))
    model = awd_lstm_clas(vocab, 2, pad_token=PAD, bptt=BPTT)
    groups = clas_layer_groups(model)
    jstep, compile_s, _ = jaxfast_step(model, tokens, targets, group_of_path=groups.group_of_path,
                                       n_groups=groups.n_groups)
    fns, tfirst = {"jax": jstep}, None
    if torch is not None:
        import torch_awd_lstm_train as tt
        import torch_reference as tr

        torch.manual_seed(0)
        tstep = tr.train_step(tt.text_classifier(vocab, 2, pad_token=PAD, bptt=BPTT),
                              torch.nn.functional.cross_entropy, (torch.from_numpy(tokens.astype(np.int64)),),
                              torch.from_numpy(targets.astype(np.int64)), lr=1e-3)
        tfirst = timed_first(tstep)
        fns["torch"] = tstep
    med, best = medians_and_best(fns, n_steps, warmup=1)
    n_flops = 3.0 * bs * doc_len * lstm_flops_per_token()
    return row(f"awd_lstm_full_classifier_{doc_len}tok_bs{bs}", med, best, compile_s, n_flops, tfirst)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per contender (median)")
    parser.add_argument("--vocab", type=int, default=60_000, help="vocabulary (fastai's max: 60,000)")
    parser.add_argument("--lm-bs", type=int, default=64)
    parser.add_argument("--clas-bs", type=int, default=32)
    parser.add_argument("--doc-len", type=int, default=280, help="classifier document length in tokens")
    parser.add_argument("--only", nargs="*", choices=["lm", "classifier"], help="default: both")
    args = parser.parse_args(argv)
    torch = import_torch()
    rows = []
    if not args.only or "lm" in args.only:
        rows.append(bench_lm(args.steps, torch, args.vocab, args.lm_bs))
        print(markdown_table(rows[-1:]).splitlines()[-1], f"(load {load_average()})", flush=True)
    if not args.only or "classifier" in args.only:
        rows.append(bench_classifier(args.steps, torch, args.vocab, args.clas_bs, args.doc_len))
        print(markdown_table(rows[-1:]).splitlines()[-1], f"(load {load_average()})", flush=True)
    print(f"\nfull-size AWD-LSTM train steps, load {load_average()}")
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
