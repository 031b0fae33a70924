"""Lesson 3 IMDB (ULMFiT): the text learner factories, LM batches in the step's layout, the
LM's perplexity falling, encoder transfer, text generation, classifier export + prediction,
and the experiment end to end: rerun resumes, kill -9 mid-LM then rerun ends identical."""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxfast.errors import InputError
from jaxfast.learner import TrainConfig
from jaxfast.text import Tokenizer, TokenizedText, clas_databunch, lm_databunch, read_texts_csv, tokenize_source
from jaxfast.text.learner import (LMBatches, encoder_params, language_model_learner, load_encoder, save_encoder,
                                  text_classifier_learner)
from jaxfast.text.predict import predict_text, predict_text_files, predict_texts, tokenizer_meta

REPO = Path(__file__).resolve().parents[1]
CRASH = Path(__file__).with_name("crash_after_saves.py")
MODULE = "experiments.lesson3_imdb"
NEUTRAL = ("the film movie story actor plot scene was is and a of it this that with director camera music "
           "script ending character time watch").split()
POSITIVE = "great wonderful loved brilliant superb".split()
NEGATIVE = "awful boring hated terrible dull".split()


def write_reviews(path: Path, n_train: int = 32, n_valid: int = 16, seed: int = 0) -> Path:
    """A texts.csv of learnable fake reviews: neutral words plus a few words of the label's sentiment."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_train + n_valid):
        label = "positive" if i % 2 else "negative"
        words = list(rng.choice(NEUTRAL, size=int(rng.integers(40, 60))))
        for at in rng.integers(0, len(words), size=4):
            words[at] = str(rng.choice(POSITIVE if label == "positive" else NEGATIVE))
        text = " ".join(words).capitalize() + "."
        rows.append({"label": label, "text": text, "is_valid": str(i >= n_train)})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["label", "text", "is_valid"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    return write_reviews(tmp_path_factory.mktemp("reviews") / "texts.csv")


@pytest.fixture(scope="module")
def tokens(reviews):
    return tokenize_source(read_texts_csv(reviews), Tokenizer("regex"))


SIZES = {"emb_sz": 16, "n_hid": 24, "n_layers": 2}
QUIET = TrainConfig(progress=False, tensorboard=False)


def test_lm_batches_are_the_steps_layout(tokens):
    data = lm_databunch(tokens, batch_size=4, bptt=8, seed=0)
    wrapped = LMBatches(data.train)
    raw, batch = next(data.train.batches(1)), next(wrapped.batches(1))
    assert len(wrapped) == len(data.train) and wrapped.num_rows == data.train.num_rows
    np.testing.assert_array_equal(batch["inputs"]["tokens"], raw["inputs"])
    np.testing.assert_array_equal(batch["inputs"]["reset"], raw["reset"])
    np.testing.assert_array_equal(batch["targets"]["ids"], raw["targets"])
    np.testing.assert_array_equal(batch["targets"]["weights"], raw["token_mask"])
    np.testing.assert_array_equal(batch["mask"], raw["mask"])
    sample = wrapped.sample_inputs()
    assert sample["tokens"].shape == raw["inputs"].shape and sample["token_mask"].shape == raw["inputs"].shape


def cyclic_corpus(n_docs: int = 40, length: int = 60, seed: int = 0) -> TokenizedText:
    """Documents that walk a fixed cycle of 12 words from a random start: a learnable stream."""
    cycle = "the film was great and the actor was good but the end".split()
    rng = np.random.default_rng(seed)
    docs = [["xxbos"] + [cycle[(start + i) % len(cycle)] for i in range(length)]
            for start in rng.integers(0, len(cycle), size=n_docs)]
    return TokenizedText({"train": docs}, {"train": None}, (), "test")


def test_lm_perplexity_falls_and_generates():
    data = lm_databunch(cyclic_corpus(), batch_size=4, bptt=12, seed=0, random_bptt=False)
    learn = language_model_learner(data, "awd_lstm", drop_mult=0.1, config=QUIET, log=lambda _: None,
                                   tokenizer=tokenizer_meta(Tokenizer("regex")), **SIZES)
    assert learn.state.carry, "the LM's hidden state must live in the train state's carry"
    before = learn.validate()
    learn.fit_one_cycle(3, 1e-2, moms=(0.8, 0.7))
    after = learn.validate()
    assert np.exp(after["loss"]) < 0.5 * np.exp(before["loss"]), (before, after)
    assert after["token_accuracy"] > max(0.2, 2 * before["token_accuracy"]), (before, after)
    first = predict_text(learn, "The film was", n_words=6, temperature=0.75, seed=1)
    assert first.startswith("The film was ") and len(first.split()) == 3 + 6
    assert "xxunk" not in first.split()[3:]
    assert predict_text(learn, "The film was", n_words=6, temperature=0.75, seed=1) == first  # seeded


def test_encoder_moves_from_lm_to_classifier(tokens, tmp_path):
    data_lm = lm_databunch(tokens, batch_size=4, bptt=12, seed=0)
    lm = language_model_learner(data_lm, drop_mult=0.1, config=QUIET, log=lambda _: None, **SIZES)
    data_clas = clas_databunch(tokens, data_lm.vocab, batch_size=8, max_len=32)
    clas = text_classifier_learner(data_clas, bptt=12, max_len=32, config=QUIET, log=lambda _: None, **SIZES)
    head_before = clas.state.params["head"]
    load_encoder(clas, save_encoder(lm, tmp_path / "encoder"))
    for a, b in zip(*(jax_leaves(encoder_params(x)) for x in (lm, clas)), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax_leaves(clas.state.params["head"]), jax_leaves(head_before), strict=True):
        np.testing.assert_array_equal(a, b)
    other = text_classifier_learner(data_clas, bptt=12, max_len=32, config=QUIET, log=lambda _: None,
                                    emb_sz=16, n_hid=20, n_layers=2)
    with pytest.raises(InputError, match="does not fit"):
        load_encoder(other, encoder_params(lm))


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def _run(args, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _common(data_dir: Path) -> list:
    return ["--tiny", "--data-dir", str(data_dir), "--max-docs", "24", "--lm-epochs", "1",
            "--train.checkpoint-every-steps", "20", "--train.no-tensorboard"]


@pytest.fixture(scope="module")
def straight_run(reviews, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("imdb") / "straight"
    done = _run(["-m", MODULE, *_common(reviews.parent), "--workdir", str(workdir)])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return workdir, done.stdout


@pytest.mark.slow  # three runs of the experiment in subprocesses (compiles dominate)
def test_tiny_experiment_runs_exports_and_resumes(straight_run, reviews, tmp_path):
    workdir, stdout = straight_run
    assert "starts from scratch" in stdout and "generated: I liked this movie because" in stdout
    final = json.loads((workdir / "metrics.json").read_text())["final"]
    assert {"lm_valid_loss", "lm_valid_accuracy", "valid_loss", "valid_accuracy"} <= set(final)
    history = (workdir / "lm" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 2  # the frozen-rate cycle and one unfrozen epoch
    from jaxfast.export import load_export

    exported = load_export(workdir / "clas" / "export")
    assert exported.meta["kind"] == "text_classifier" and exported.meta["classes"] == ["negative", "positive"]
    good, empty = predict_texts(exported, ["Great wonderful film, loved it.", "  "])
    assert good[0] in ("negative", "positive") and abs(float(np.sum(good[2])) - 1.0) < 1e-5
    assert isinstance(empty, InputError) and "empty" in str(empty)
    (tmp_path / "a.txt").write_text("An awful, boring film.")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("Un film tr\xe8s ennuyeux".encode("latin-1"))
    out, err = io.StringIO(), io.StringIO()
    status = predict_text_files(exported, [str(tmp_path / n) for n in ("a.txt", "empty.txt", "latin1.txt")], out, err)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert status == 1 and len(rows) == 3
    assert rows[0]["prediction"] in ("negative", "positive") and rows[0]["error"] == ""
    assert "empty" in rows[1]["error"] and "not UTF-8" in rows[2]["error"]
    again = _run(["-m", MODULE, *_common(reviews.parent), "--workdir", str(workdir)])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from checkpoint" in again.stdout
    assert json.loads((workdir / "metrics.json").read_text())["final"] == final


@pytest.mark.slow  # three runs of the experiment in subprocesses (compiles dominate)
def test_sigkill_mid_lm_then_rerun_ends_identical(straight_run, reviews, tmp_path):
    workdir, _ = straight_run
    killed = tmp_path / "killed"
    crash = _run([str(CRASH), "2", MODULE, *_common(reviews.parent), "--workdir", str(killed)])
    assert crash.returncode == -9, crash.stdout[-2000:] + crash.stderr[-2000:]
    assert not (killed / "clas").exists()  # killed inside the language model's training
    resumed = _run(["-m", MODULE, *_common(reviews.parent), "--workdir", str(killed)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint" in resumed.stdout
    a = json.loads((workdir / "metrics.json").read_text())["final"]
    b = json.loads((killed / "metrics.json").read_text())["final"]
    assert a == b
    for part in ("lm", "clas"):
        with ocp.StandardCheckpointer() as ckpt:
            pa, pb = (ckpt.restore(w / part / "export" / "variables") for w in (workdir, killed))
        for x, y in zip(jax_leaves(pa), jax_leaves(pb), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_imdb_sample_subset_learns(tmp_path):
    """A few dozen real reviews: the tiny experiment's LM learns (perplexity under the vocab
    size by far) and the classifier runs on every split."""
    from conftest import shared_dataset

    data = shared_dataset("imdb_sample")
    done = _run(["-m", MODULE, "--tiny", "--data-dir", str(data), "--workdir", str(tmp_path / "w")])
    assert done.returncode == 0, done.stderr[-3000:]
    final = json.loads((tmp_path / "w" / "metrics.json").read_text())["final"]
    vocab = len(json.loads((tmp_path / "w" / "clas" / "export" / "export.json").read_text())["vocab"])
    assert np.exp(final["lm_valid_loss"]) < vocab / 5
    assert 0.0 <= final["valid_accuracy"] <= 1.0


def test_budgets_shrink_epochs_then_the_lm_corpus():
    from experiments.lesson3_imdb import clas_budget_plan, lm_budget_plan

    assert lm_budget_plan(300_000, 1, 7, 2_500_000) == (7, 1.0)  # imdb_sample: all 8 epochs fit
    assert lm_budget_plan(300_000, 1, 7, None) == (7, 1.0)
    assert lm_budget_plan(600_000, 1, 7, 2_500_000) == (3, 1.0)  # 4 epochs of 0.6M
    epochs, fraction = lm_budget_plan(3_000_000, 1, 7, 2_500_000)  # several thousand reviews
    assert epochs == 1 and (1 + epochs) * 3_000_000 * fraction == pytest.approx(2_500_000)
    assert clas_budget_plan(800, (1, 1, 1, 5), 25_000) == (1, 1, 1, 5)
    assert clas_budget_plan(5000, (1, 1, 1, 5), 25_000) == (1, 1, 1, 2)
    assert clas_budget_plan(20_000, (1, 1, 1, 5), 25_000) == (1, 1, 1, 1)
    assert clas_budget_plan(20_000, (1, 1, 1, 5), None) == (1, 1, 1, 5)
    with pytest.raises(InputError, match="--lm-token-budget"):
        lm_budget_plan(300_000, 1, 7, 0)
    with pytest.raises(InputError, match="--clas-doc-budget"):
        clas_budget_plan(800, (1, 1, 1, 5), -1)


def test_lm_databunch_doc_fraction_reads_a_seeded_part(tokens):
    full = lm_databunch(tokens, batch_size=4, bptt=8, seed=0)
    part = lm_databunch(tokens, batch_size=4, bptt=8, seed=0, doc_fraction=0.5)
    again = lm_databunch(tokens, batch_size=4, bptt=8, seed=0, doc_fraction=0.5)
    n_full = full.train.num_tokens + full.valid.num_tokens
    n_part = part.train.num_tokens + part.valid.num_tokens
    assert 0.35 * n_full < n_part < 0.65 * n_full
    assert part.train.num_tokens == again.train.num_tokens
    np.testing.assert_array_equal(part.train.stream(0), again.train.stream(0))
    with pytest.raises(InputError, match="doc_fraction"):
        lm_databunch(tokens, batch_size=4, bptt=8, doc_fraction=0.0)
