"""Lessons 3-4 (IMDB): ULMFiT as fastai v1 teaches it: fine-tune an AWD-LSTM language model
on all the reviews' text, then train a sentiment classifier on its encoder with gradual
unfreezing.

fastai (WT103-pretrained, full IMDB): LM `fit_one_cycle(1, 1e-2, moms=(0.8, 0.7))`, unfreeze,
`fit_one_cycle(10, 1e-3, moms=(0.8, 0.7))` (accuracy 0.341), save_encoder; classifier
`fit_one_cycle(1, 2e-2)`, `freeze_to(-2)` + `slice(1e-2/2.6**4, 1e-2)`, `freeze_to(-3)` +
`slice(5e-3/2.6**4, 5e-3)`, unfreeze + `slice(1e-3/2.6**4, 1e-3)` for 2 epochs (0.944).

Without --pretrained the LM starts from scratch (the run says so). The defaults are sized for
that case on a small labelled set (fastai's 1,000-review imdb_sample, 2 CPU cores, about
15 minutes): a smaller AWD-LSTM (emb 100, 2 layers of 256 hidden; measured on imdb_sample with
a 6,656-token vocab (min_freq 3), batch 32: 0.40 s per LM step, 136 steps an epoch, and 0.7 s
per classifier batch, where emb 200 / 3 x 400 takes 1.1 s and 3.5 s, and fastai's full size
far more), 1 + 7 LM epochs at a from-scratch rate (the LM reads the train and valid text:
labels are never used, as fastai's lesson reads test and unsup too), drop_mult 0.5 for both,
gradients clipped to a global norm of 0.25 (AWD-LSTM's; without it the from-scratch classifier
diverged at its peak rate: train loss back to 0.74 from 0.53, valid accuracy stuck at the
majority class), no AR/TAR from scratch (`--alpha`/`--beta`; fastai's 2 and 1 with
--pretrained), and from scratch the classifier's last cycle trains every group at one rate
for 5 epochs (`--clas-lr-div`). A larger
corpus keeps to about the same work: `--lm-token-budget` (2.5M LM training tokens: fewer LM
epochs, then part of the text) and `--clas-doc-budget` (25,000 training documents: a shorter
last classifier cycle), so several thousand reviews per split stay within about 30 minutes. On imdb_sample a from-scratch LM stays near the unigram level
in this budget (valid perplexity ~300), so the classifier learns the words mostly by itself; a
bag-of-words logistic regression reaches 0.835 on the same split. Measured with these defaults: LM
valid perplexity 130 (token accuracy 0.200), classifier valid accuracy 0.800, 8:46 wall on the
idle 2-core machine (14.8 CPU-minutes, spaCy tokenizing included). With --pretrained use the
full size (--emb-sz 400 --n-hid 1152) and fastai's rates (--lm-lr 1e-3 --clas-lrs 2e-2 1e-2 5e-3 1e-3 ...). Outputs in the workdir: lm/ and clas/ (checkpoints,
history.csv, plots), lm/encoder (fastai's save_encoder), lm/export, clas/export (predict with
`python -m jaxfast.predict clas/export texts.csv|file.txt...`), tokens.npz (the token cache).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np

from jaxfast import experiment
from jaxfast.errors import InputError
from jaxfast.experiment import Run, RunConfig, print_results
from jaxfast.learner import TrainConfig
from jaxfast.text.databunch import TokenizedText, clas_databunch, lm_databunch, tokenize_source
from jaxfast.text.sources import TextSource, load_text_source
from jaxfast.text.tokenize import Tokenizer


@dataclasses.dataclass(frozen=True)
class Config:
    """Lessons 3-4: IMDB sentiment by ULMFiT (AWD-LSTM LM fine-tuning, then a classifier).

    --data-dir: fastai's texts.csv (file or folder, e.g. imdb_sample/) or Stanford's aclImdb/; without it, tfds imdb_reviews (needs the network)."""

    run: Run = RunConfig()
    train: TrainConfig = TrainConfig(wd=0.1, clip=0.25)
    pretrained: str | None = None
    """fastai's WT103 folder (lstm_fwd.pth + itos_wt103.pkl), or 'download' (fastai's URL, cached); none: LM from scratch."""
    tokenizer: Literal["auto", "spacy", "regex"] = "auto"
    valid_pct: float | None = None
    """A random valid split of train where the source has none (aclImdb/tfds validate on test otherwise)."""
    max_docs: int | None = None
    """Use a seeded random N documents of each split (tiny runs, timings)."""
    # language model
    emb_sz: int = 100
    n_hid: int = 256
    n_layers: int = 2
    bptt: int = 70
    max_vocab: int = 60000
    min_freq: int = 3
    """fastai: 2; 3 drops the rarest words of a small corpus (a smaller, faster decoder)."""
    lm_valid_pct: float = 0.1
    lm_batch_size: int = 32
    lm_drop_mult: float = 0.5
    lm_frozen_epochs: int = 1
    """Epochs of fastai's first LM cycle (frozen body when pretrained)."""
    lm_frozen_lr: float = 1e-2
    lm_epochs: int = 7
    """Epochs of the unfrozen LM cycle (fastai: 10)."""
    lm_lr: float = 5e-3
    """Unfrozen LM rate (fastai: 1e-3 from WT103; from scratch a higher rate learns faster)."""
    # classifier
    clas_batch_size: int = 32
    clas_drop_mult: float = 0.5
    max_len: int = 70 * 20
    clas_epochs: tuple[int, int, int, int] = (1, 1, 1, 5)
    """Epochs of the four gradual-unfreezing cycles (head, -2, -3, all); fastai: 1, 1, 1, 2."""
    clas_lrs: tuple[float, float, float, float] = (2e-2, 1e-2, 5e-3, 3e-3)
    """Top rates of the four cycles; fastai's last is 1e-3 (from WT103)."""
    clas_lr_div: float | None = None
    """The lowest group's rate is lr / clas_lr_div (fastai's slice(lr / 2.6**4, lr)); none: 2.6**4 with
    --pretrained, 1 from scratch (a randomly initialised encoder has nothing to protect, and its
    embedding must learn the words at the head's rate)."""
    moms: tuple[float, float] = (0.8, 0.7)
    alpha: float | None = None
    """fastai's AR weight (RNNTrainer), LM and classifier; none: fastai's 2 with --pretrained, 0 from scratch."""
    beta: float | None = None
    """fastai's TAR weight (RNNTrainer), LM and classifier; none: fastai's 1 with --pretrained, 0 from
    scratch (on imdb_sample AR/TAR took the LM's valid perplexity from 130 to 96, but its encoder gave
    the classifier 0.72-0.76 valid accuracy instead of 0.78-0.80)."""
    # budgets: a larger corpus trains on about as many tokens and documents, not for hours
    lm_token_budget: int | None = 2_500_000
    """LM training tokens over both cycles at most: on a larger corpus the unfrozen cycle's epochs
    shrink (to 1), then the LM reads a seeded random part of the documents so that 1 + 1 epochs
    fit (imdb_sample: 8 epochs of 0.3M tokens fit). none: the epochs as given, on all the text."""
    clas_doc_budget: int | None = 25_000
    """Training documents the classifier reads over its four cycles at most: on a larger set the
    last cycle's epochs shrink (to 1). none: the epochs as given."""
    # text generation
    generate: str = "I liked this movie because"
    n_words: int = 40
    temperature: float = 0.75


TINY = Config(train=TrainConfig(progress=False, wd=0.1, clip=0.25), tokenizer="regex", max_docs=40, min_freq=2, emb_sz=16, n_hid=32,
              n_layers=2, bptt=16, lm_batch_size=8, lm_epochs=2, lm_lr=1e-2, clas_batch_size=8, max_len=32,
              clas_epochs=(1, 1, 1, 1), n_words=8, alpha=2.0, beta=1.0)


def _check_budget(flag: str, budget: int | None) -> None:
    if budget is not None and budget < 1:
        raise InputError(f"{flag} must be a positive count (or none), got {budget}")


def lm_budget_plan(num_tokens: int, frozen_epochs: int, epochs: int, budget: int | None) -> tuple[int, float]:
    """(unfrozen LM epochs, fraction of the documents the LM reads) so that the LM trains on at
    most `budget` tokens: fewer unfrozen epochs first (down to 1), then part of the corpus."""
    _check_budget("--lm-token-budget", budget)
    if budget is None or (frozen_epochs + epochs) * num_tokens <= budget:
        return epochs, 1.0
    fitted = max(1, budget // max(num_tokens, 1) - frozen_epochs)
    if (frozen_epochs + fitted) * num_tokens <= budget:
        return fitted, 1.0
    return 1, budget / ((frozen_epochs + 1) * num_tokens)


def clas_budget_plan(num_docs: int, epochs: tuple[int, ...], budget: int | None) -> tuple[int, ...]:
    """The four cycles' epochs with the last one shrunk (down to 1) so that the classifier reads
    at most `budget` training documents (when the first cycles alone fit)."""
    _check_budget("--clas-doc-budget", budget)
    if budget is None or sum(epochs) * num_docs <= budget:
        return tuple(epochs)
    last = max(1, budget // max(num_docs, 1) - sum(epochs[:-1]))
    return (*epochs[:-1], min(last, epochs[-1]))


def subsample(source: TextSource, max_docs: int | None, seed: int) -> TextSource:
    """A seeded random `max_docs` documents of each split (all when None)."""
    if max_docs is None:
        return source
    rng = np.random.default_rng(seed)
    splits = {name: part.subset(np.sort(rng.permutation(len(part))[:max_docs])) for name, part in source.splits.items()}
    return dataclasses.replace(source, splits=splits)


def load_tokens(config: Config, workdir: Path, tokenizer: Tokenizer) -> TokenizedText:
    """Every split tokenised once; a rerun reads workdir/tokens.npz."""
    cache = workdir / "tokens.npz"
    if cache.is_file():
        text = TokenizedText.load(cache)
        print(f"tokens from {cache} ({text.backend})")
        return text
    source = load_text_source(config.run.data_dir, config.valid_pct, config.train.seed)
    source = subsample(source, config.max_docs, config.train.seed)
    print(source.describe())
    text = tokenize_source(source, tokenizer)
    text.save(cache)
    return text


def main(config: Config, workdir: Path) -> dict:
    from jaxfast.text.learner import encoder_params, language_model_learner, load_encoder, save_encoder, text_classifier_learner
    from jaxfast.text.predict import predict_text, tokenizer_meta

    _check_budget("--lm-token-budget", config.lm_token_budget)  # before minutes of tokenizing
    _check_budget("--clas-doc-budget", config.clas_doc_budget)
    tokenizer = Tokenizer(config.tokenizer)
    text = load_tokens(config, workdir, tokenizer)
    print(text.describe())
    sizes = {"emb_sz": config.emb_sz, "n_hid": config.n_hid, "n_layers": config.n_layers}
    tok_meta = tokenizer_meta(tokenizer)

    # 1. the language model on every split's text (or the part of it that fits its budget)
    lm_tokens = int(sum(len(d) for docs in text.tokens.values() for d in docs) * (1 - config.lm_valid_pct))
    lm_epochs, lm_fraction = lm_budget_plan(lm_tokens, config.lm_frozen_epochs, config.lm_epochs, config.lm_token_budget)
    if (lm_epochs, lm_fraction) != (config.lm_epochs, 1.0):
        print(f"LM budget ({config.lm_token_budget} tokens, --lm-token-budget): {lm_epochs} unfrozen epochs "
              f"instead of {config.lm_epochs}, on {lm_fraction:.0%} of the {lm_tokens} training tokens")
    data_lm = lm_databunch(text, config.lm_batch_size, config.bptt, config.lm_valid_pct, config.train.seed,
                           max_vocab=config.max_vocab, min_freq=config.min_freq, doc_fraction=lm_fraction)
    print(f"LM: vocab {len(data_lm.vocab)}, {data_lm.train.num_tokens} train / {data_lm.valid.num_tokens} valid tokens, "
          f"{len(data_lm.train)} batches of {config.lm_batch_size} x {data_lm.train.seq_len}")
    pretrained = {None: False, "download": True}.get(config.pretrained, config.pretrained)
    reg = {"alpha": config.alpha if config.alpha is not None else (2.0 if pretrained else 0.0),
           "beta": config.beta if config.beta is not None else (1.0 if pretrained else 0.0)}
    learn = language_model_learner(data_lm, "awd_lstm", pretrained, drop_mult=config.lm_drop_mult, config=config.train,
                                   workdir=workdir / "lm", tokenizer=tok_meta, **reg, **sizes)
    learn.fit_one_cycle(config.lm_frozen_epochs, config.lm_frozen_lr, moms=config.moms)
    learn.unfreeze()
    learn.fit_one_cycle(lm_epochs, config.lm_lr, moms=config.moms)
    lm_results = learn.validate()
    print(f"LM valid: loss {lm_results['loss']:.4f} (perplexity {np.exp(lm_results['loss']):.1f}), "
          f"accuracy {lm_results['token_accuracy']:.4f}")
    sample = predict_text(learn, config.generate, config.n_words, config.temperature, seed=config.train.seed)
    print(f"generated: {sample}")
    save_encoder(learn, workdir / "lm" / "encoder")
    learn.export(workdir / "lm" / "export")
    encoder = encoder_params(learn)

    # 2. the classifier with gradual unfreezing
    data_clas = clas_databunch(text, data_lm.vocab, config.clas_batch_size, config.train.seed, config.max_len)
    print(f"classifier: classes {list(data_clas.classes)}, train {data_clas.train.num_rows}, "
          + ", ".join(f"{k} {v.num_rows}" for k, v in data_clas.eval_splits().items()))
    learn_c = text_classifier_learner(data_clas, "awd_lstm", drop_mult=config.clas_drop_mult, bptt=config.bptt,
                                      max_len=config.max_len, config=config.train, workdir=workdir / "clas",
                                      tokenizer=tok_meta, **reg, **sizes)
    load_encoder(learn_c, encoder)
    learn_c.freeze()
    lr_div = config.clas_lr_div or (2.6 ** 4 if pretrained else 1.0)
    clas_epochs = clas_budget_plan(data_clas.train.num_rows, config.clas_epochs, config.clas_doc_budget)
    if clas_epochs != tuple(config.clas_epochs):
        print(f"classifier budget ({config.clas_doc_budget} documents, --clas-doc-budget): epochs {list(clas_epochs)} "
              f"instead of {list(config.clas_epochs)} on {data_clas.train.num_rows} training documents")
    for stage, (epochs, lr) in enumerate(zip(clas_epochs, config.clas_lrs)):
        if stage == 3:
            learn_c.unfreeze()
        elif stage > 0:
            learn_c.freeze_to(-(stage + 1))
        learn_c.fit_one_cycle(epochs, lr if stage == 0 else slice(lr / lr_div, lr), moms=config.moms)
    results = learn_c.evaluate_all()
    print_results(results)
    path = learn_c.export(workdir / "clas" / "export")
    print(f"export: {path} (predict with: python -m jaxfast.predict {path} texts.csv|review.txt ...)")
    return {"lm_valid_loss": lm_results["loss"], "lm_valid_accuracy": lm_results["token_accuracy"], **results}


if __name__ == "__main__":
    experiment.run(main, Config(), TINY)
