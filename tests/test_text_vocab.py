"""fastai v1's Vocab (ids from fastai v1's test_numericalize_and_textify), JSON save/load."""

import json
import pickle

import numpy as np
import pytest

from jaxfast.errors import InputError
from jaxfast.text.rules import SPECIAL_TOKENS
from jaxfast.text.vocab import Vocab

FASTAI_TOKS = [["ok", "!", "xxmaj", "nice", "!", "anti", "-", "virus"], ["!", "xxmaj", "meg", "xxmaj", "nice", "meg"]]


def test_numericalize_and_textify_as_fastai():
    vocab = Vocab.create(FASTAI_TOKS, max_vocab=20, min_freq=2)
    assert vocab.numericalize(FASTAI_TOKS[0]).tolist() == [0, 9, 5, 10, 9, 0, 0, 0]
    assert vocab.textify([0, 3, 10, 11, 9]) == "xxunk xxeos nice meg !"
    assert vocab.textify(np.array([10, 11]), sep=None) == ["nice", "meg"]
    assert len(vocab) == 16 and vocab.itos[12:] == ["xxfake"] * 4  # padded to a multiple of 8
    with pytest.raises(InputError, match="token id 16 is outside the vocab of 16 tokens"):
        vocab.textify([16])


def test_special_tokens_first_and_ids():
    vocab = Vocab.create([["b", "a", "a", "b", "b", "c"]], max_vocab=60000, min_freq=1)
    assert tuple(vocab.itos[:9]) == SPECIAL_TOKENS
    assert (vocab.unk_id, vocab.pad_id, vocab.bos_id) == (0, 1, 2)
    assert vocab.itos[9:12] == ["b", "a", "c"]  # by frequency
    assert vocab.numericalize(["c", "never-seen"]).dtype == np.int32


def test_max_vocab_and_min_freq():
    docs = [[f"w{i}"] * (i + 1) for i in range(30)]  # w{i} appears i + 1 times
    vocab = Vocab.create(docs, max_vocab=60000, min_freq=2)
    assert "w0" not in vocab and "w1" in vocab
    small = Vocab.create(docs, max_vocab=16, min_freq=2)
    assert len(small) == 16 and small.itos[9:] == [f"w{i}" for i in range(29, 22, -1)]
    with pytest.raises(InputError, match="max_vocab must be at least 9"):
        Vocab.create(docs, max_vocab=5)


def test_save_load_json_round_trip(tmp_path):
    vocab = Vocab.create(FASTAI_TOKS + [["café", "naïve", "café", "naïve"]], min_freq=2)
    path = vocab.save(tmp_path / "sub" / "vocab.json")
    assert json.loads(path.read_text(encoding="utf-8"))["itos"] == vocab.itos
    assert Vocab.load(path) == vocab


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.json does not exist"):
        Vocab.load(tmp_path / "missing.json")
    pickled = tmp_path / "itos.pkl"
    pickled.write_bytes(pickle.dumps(["xxunk", "xxpad"]))
    with pytest.raises(InputError, match="itos.pkl is not a JSON vocab"):
        Vocab.load(pickled)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('["xxunk", "a"]')
    with pytest.raises(InputError, match="wrong.json is not a jaxfast-vocab file"):
        Vocab.load(wrong)
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps({"format": "jaxfast-vocab", "itos": ["xxunk", "a", "a"]}))
    with pytest.raises(InputError, match=r"dup.json: vocab token 'a' appears twice \(ids 1 and 2\)"):
        Vocab.load(dup)


def test_bad_vocab_lists():
    with pytest.raises(InputError, match="must start with 'xxunk'"):
        Vocab(["a", "xxunk"])
    with pytest.raises(InputError, match="must be strings"):
        Vocab(["xxunk", 3])
