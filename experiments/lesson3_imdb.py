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
labels are never used, as fastai's lesson reads test and unsup too), drop_mult 0.5 for both. With --pretrained use the full size (--emb-sz 400 --n-hid 1152) and
fastai's rates (--lm-lr 1e-3 ...). Outputs in the workdir: lm/ and clas/ (checkpoints,
history.csv, plots), lm/encoder (fastai's save_encoder), lm/export, clas/export (predict with
`python -m jaxfast.predict clas/export texts.csv|file.txt...`), tokens.npz (the token cache).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np

from jaxfast import experiment
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
    train: TrainConfig = TrainConfig(wd=0.1)
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
    clas_epochs: tuple[int, int, int, int] = (1, 1, 1, 2)
    """Epochs of the four gradual-unfreezing cycles (head, -2, -3, all)."""
    clas_lrs: tuple[float, float, float, float] = (2e-2, 1e-2, 5e-3, 1e-3)
    """Top rates of the four cycles; the lower groups get lr / 2.6**4 (fastai's slice)."""
    moms: tuple[float, float] = (0.8, 0.7)
    # text generation
    generate: str = "I liked this movie because"
    n_words: int = 40
    temperature: float = 0.75


TINY = Config(train=TrainConfig(progress=False, wd=0.1), tokenizer="regex", max_docs=40, min_freq=2, emb_sz=16, n_hid=32,
              n_layers=2, bptt=16, lm_batch_size=8, lm_epochs=2, lm_lr=1e-2, clas_batch_size=8, max_len=32,
              clas_epochs=(1, 1, 1, 1), n_words=8)


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

    tokenizer = Tokenizer(config.tokenizer)
    text = load_tokens(config, workdir, tokenizer)
    print(text.describe())
    sizes = {"emb_sz": config.emb_sz, "n_hid": config.n_hid, "n_layers": config.n_layers}
    tok_meta = tokenizer_meta(tokenizer)

    # 1. the language model on every split's text
    data_lm = lm_databunch(text, config.lm_batch_size, config.bptt, config.lm_valid_pct, config.train.seed,
                           max_vocab=config.max_vocab, min_freq=config.min_freq)
    print(f"LM: vocab {len(data_lm.vocab)}, {data_lm.train.num_tokens} train / {data_lm.valid.num_tokens} valid tokens, "
          f"{len(data_lm.train)} batches of {config.lm_batch_size} x {data_lm.train.seq_len}")
    pretrained = {None: False, "download": True}.get(config.pretrained, config.pretrained)
    learn = language_model_learner(data_lm, "awd_lstm", pretrained, drop_mult=config.lm_drop_mult, config=config.train,
                                   workdir=workdir / "lm", tokenizer=tok_meta, **sizes)
    learn.fit_one_cycle(config.lm_frozen_epochs, config.lm_frozen_lr, moms=config.moms)
    learn.unfreeze()
    learn.fit_one_cycle(config.lm_epochs, config.lm_lr, moms=config.moms)
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
                                      tokenizer=tok_meta, **sizes)
    load_encoder(learn_c, encoder)
    learn_c.freeze()
    for stage, (epochs, lr) in enumerate(zip(config.clas_epochs, config.clas_lrs)):
        if stage == 3:
            learn_c.unfreeze()
        elif stage > 0:
            learn_c.freeze_to(-(stage + 1))
        learn_c.fit_one_cycle(epochs, lr if stage == 0 else slice(lr / 2.6 ** 4, lr), moms=config.moms)
    results = learn_c.evaluate_all()
    print_results(results)
    path = learn_c.export(workdir / "clas" / "export")
    print(f"export: {path} (predict with: python -m jaxfast.predict {path} texts.csv|review.txt ...)")
    return {"lm_valid_loss": lm_results["loss"], "lm_valid_accuracy": lm_results["token_accuracy"], **results}


if __name__ == "__main__":
    experiment.run(main, Config(), TINY)
