"""Text sources (texts.csv, aclImdb/, tfds offline) and the LM / classifier DataBunches on real IMDB text."""

import gzip
import time

import numpy as np
import pytest

from conftest import shared_dataset
from jaxfast.data import download
from jaxfast.data.download import DatasetUnavailable
from jaxfast.errors import InputError
from jaxfast.text.databunch import TokenizedText, clas_databunch, lm_databunch, tokenize_source
from jaxfast.text.sources import load_imdb_tfds, load_text_source, read_imdb_folder, read_texts_csv
from jaxfast.text.tokenize import Tokenizer

CSV = 'label,text,is_valid\nnegative,"Bad.<br />Very bad",False\npositive,"Great, ""really""",False\n' \
      "positive,Fine film,True\n"


def test_texts_csv_plain_and_gzipped(tmp_path):
    (tmp_path / "texts.csv").write_text(CSV, encoding="utf-8")
    source = read_texts_csv(tmp_path)
    assert list(source.splits) == ["train", "valid"] and source.classes == ("negative", "positive")
    assert source.splits["train"].docs == [("Bad.<br />Very bad",), ('Great, "really"',)]
    assert source.splits["train"].labels.tolist() == [0, 1] and source.splits["valid"].labels.tolist() == [1]
    assert "train: 2 documents (negative 1, positive 1)" in source.describe()
    gz = tmp_path / "other" / "texts.csv.gz"
    gz.parent.mkdir()
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write(CSV)
    assert load_text_source(gz).splits["valid"].docs == [("Fine film",)]


def test_texts_csv_errors_name_the_file(tmp_path):
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("label,text,is_valid\nnegative,caf\xe9,False\n".encode("latin-1"))
    with pytest.raises(InputError, match="latin1.csv is not UTF-8"):
        read_texts_csv(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match="empty.csv is empty"):
        read_texts_csv(empty)
    cols = tmp_path / "cols.csv"
    cols.write_text("label,review\nnegative,meh\n")
    with pytest.raises(InputError, match=r"cols.csv lacks the column\(s\) \['text', 'is_valid'\]"):
        read_texts_csv(cols)
    flag = tmp_path / "flag.csv"
    flag.write_text("label,text,is_valid\nnegative,meh,maybe\n")
    with pytest.raises(InputError, match="flag.csv: data row 0: is_valid must be True/False"):
        read_texts_csv(flag)
    blank = tmp_path / "blank.csv"
    blank.write_text('label,text,is_valid\nnegative,ok,False\nnegative," ",False\n')
    with pytest.raises(InputError, match="blank.csv: data row 1 .* has an empty 'text'"):
        read_texts_csv(blank)


def write_imdb(root, unsup_in_train=True):
    for split in ("train", "test"):
        for label in ("neg", "pos"):
            folder = root / "aclImdb" / split / label
            folder.mkdir(parents=True)
            for i in range(5):
                (folder / f"{i}_{3 if label == 'neg' else 8}.txt").write_text(f"{split} {label} review {i}", encoding="utf-8")
    unsup = root / "aclImdb" / ("train/unsup" if unsup_in_train else "unsup")
    unsup.mkdir()
    for i in range(3):
        (unsup / f"{i}_0.txt").write_text(f"unlabelled {i} é", encoding="utf-8")


def test_imdb_folder_every_split_reported(tmp_path):
    write_imdb(tmp_path)
    source = load_text_source(tmp_path)
    assert list(source.splits) == ["train", "test", "unsup"] and source.classes == ("neg", "pos")
    assert source.splits["train"].labels.tolist() == [0] * 5 + [1] * 5
    assert source.splits["unsup"].labels is None and source.splits["unsup"].docs[0] == ("unlabelled 0 é",)
    text = source.describe()
    assert "train: 10 documents (neg 5, pos 5)" in text and "unsup: 3 documents (unlabelled)" in text
    split = read_imdb_folder(tmp_path, valid_pct=0.2, seed=1)
    assert [len(split.splits[s]) for s in ("train", "valid", "test", "unsup")] == [8, 2, 10, 3]
    again = read_imdb_folder(tmp_path / "aclImdb", valid_pct=0.2, seed=1)
    assert again.splits["valid"].origins == split.splits["valid"].origins


def test_imdb_folder_fastai_layout_and_bad_files(tmp_path):
    write_imdb(tmp_path, unsup_in_train=False)
    assert len(read_imdb_folder(tmp_path).splits["unsup"]) == 3
    bad = tmp_path / "aclImdb" / "test" / "pos" / "9_9.txt"
    bad.write_bytes(b"\xff\xfe broken")
    with pytest.raises(InputError, match="9_9.txt is not UTF-8"):
        read_imdb_folder(tmp_path)
    bad.write_text("  \n")
    with pytest.raises(InputError, match="9_9.txt is empty"):
        read_imdb_folder(tmp_path)
    with pytest.raises(InputError, match="holds neither texts.csv nor an IMDB folder"):
        load_text_source(tmp_path / "aclImdb" / "test" / "pos")


def test_tfds_offline_fails_fast_naming_data_dir(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(download, "check_reachable", lambda url, timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailable, match=r"imdb_reviews.*aclImdb_v1.tar.gz.*--data-dir"):
        load_imdb_tfds(tfds_data_dir=str(tmp_path))
    assert time.perf_counter() - start < 60


@pytest.mark.slow
def test_imdb_sample_databunches(tmp_path):
    """fastai's IMDB_SAMPLE: 800/200 reviews -> LM and classifier batches with one vocab."""
    source = load_text_source(shared_dataset("imdb_sample"))
    assert [len(p) for p in source.splits.values()] == [800, 200]
    assert source.classes == ("negative", "positive")
    assert source.splits["train"].docs[0][0].startswith("Un-bleeping-believable! Meg Ryan")
    text = tokenize_source(source, Tokenizer(n_workers=1))
    first = text.tokens["train"][0]
    assert first[:8] == ["xxbos", "xxmaj", "un", "-", "bleeping", "-", "believable", "!"]
    assert TokenizedText.load(text.save(tmp_path / "tokens.npz")).tokens == text.tokens
    data_lm = lm_databunch(text, batch_size=32, bptt=70, seed=0)
    vocab = data_lm.vocab
    assert vocab.itos[:2] == ["xxunk", "xxpad"] and len(vocab) % 8 == 0 and 5000 < len(vocab) < 60000
    n_tokens = sum(len(d) for docs in text.tokens.values() for d in docs)
    assert data_lm.train.num_rows + data_lm.valid.num_rows + 2 * 32 == n_tokens  # all but each row's first
    batch = next(data_lm.train.batches(0))
    assert batch["inputs"].shape == (32, 96) and batch["reset"].all()
    unk = np.mean([(vocab.numericalize(d) == 0).mean() for d in text.tokens["valid"]])
    assert unk < 0.1  # a vocabulary of the train part covers most valid tokens
    data_clas = clas_databunch(text, vocab, batch_size=32)
    assert data_clas.classes == ("negative", "positive") and list(data_clas.eval_splits()) == ["valid"]
    widths = {b["inputs"].shape[1] for b in data_clas.train.batches(0)}
    assert len(widths) <= 10 and widths <= set(data_clas.train.buckets.tolist())
    labels = np.concatenate([b["targets"][b["mask"] > 0] for b in data_clas.valid.batches(0)])
    assert np.bincount(labels).tolist() == [107, 93]


def test_token_cache_round_trip(tmp_path):
    text = TokenizedText({"train": [["xxbos", "a", "b"], ["xxbos", "café"]], "unsup": [["xxbos", "a"]]},
                         {"train": np.array([1, 0], np.int32), "unsup": None}, ("neg", "pos"), "regex (test)")
    loaded = TokenizedText.load(text.save(tmp_path / "tokens.npz"))
    assert loaded.tokens == text.tokens and loaded.classes == text.classes and loaded.backend == text.backend
    assert loaded.labels["train"].tolist() == [1, 0] and loaded.labels["unsup"] is None
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.npz is unreadable"):
        TokenizedText.load(tmp_path / "junk.npz")
    with pytest.raises(InputError, match="nothing.npz does not exist"):
        TokenizedText.load(tmp_path / "nothing.npz")
