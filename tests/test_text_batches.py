"""Language-model and classifier batches: nothing lost, fixed shapes, deterministic, resumable."""

import numpy as np
import pytest

from jaxfast.errors import InputError
from jaxfast.text.batches import ClasLoader, LMLoader, expected_seq_len, length_buckets, random_seq_lens

PAD = 1


def fake_docs(n, seed=0, low=5, high=400):
    """Documents of distinct tokens (ids from 10 on, unique across documents), each starting with 2 (xxbos)."""
    rng = np.random.default_rng(seed)
    docs, next_id = [], 10
    for length in rng.integers(low, high, n):
        docs.append(np.concatenate([[2], np.arange(next_id, next_id + length - 1)]))
        next_id += length - 1
    return docs


def rows_from_batches(batches, batch_size):
    """Each row's tokens rebuilt from the real inputs of every batch plus the row's last target."""
    rows = [[] for _ in range(batch_size)]
    last = [None] * batch_size
    for batch in batches:
        real = batch["token_mask"] > 0
        for r in range(batch_size):
            rows[r].extend(batch["inputs"][r][real[r]].tolist())
            if real[r].any():
                last[r] = int(batch["targets"][r][real[r]][-1])
    return [row + [end] for row, end in zip(rows, last)]


@pytest.mark.parametrize("random_bptt", [True, False])
def test_lm_epoch_loses_and_repeats_no_token(random_bptt):
    loader = LMLoader(fake_docs(200), batch_size=8, bptt=70, shuffle=True, seed=3, random_bptt=random_bptt)
    for epoch in (0, 1):
        batches = list(loader.batches(epoch))
        assert len(batches) == len(loader)
        rebuilt = np.concatenate(rows_from_batches(batches, 8))
        np.testing.assert_array_equal(rebuilt, loader.stream(epoch))
        assert sorted(rebuilt.tolist()) == sorted(np.concatenate(loader.docs).tolist())
        assert sum(b["token_mask"].sum() for b in batches) == loader.num_rows


def test_lm_targets_are_inputs_shifted_and_rows_contiguous():
    loader = LMLoader(fake_docs(60), batch_size=4, bptt=20, shuffle=True, seed=0)
    batches = list(loader.batches(0))
    stream = loader.stream(0)
    position = {int(tok): i for i, tok in enumerate(stream) if tok != 2}
    for batch in batches:
        for x, y, m in zip(batch["inputs"], batch["targets"], batch["token_mask"]):
            for a, b in zip(x[m > 0], y[m > 0]):
                if a != 2 and b != 2:
                    assert position[int(b)] == position[int(a)] + 1
            assert (x[m == 0] == PAD).all() and (y[m == 0] == PAD).all()
    # the documents of an epoch all start with xxbos and appear in a shuffled order
    assert (stream == 2).sum() == 60
    assert not np.array_equal(loader.doc_order(0), np.arange(60))


def test_lm_one_shape_reset_flag_and_fastai_lengths():
    loader = LMLoader(fake_docs(600, high=800), batch_size=4, bptt=70, shuffle=True, seed=1)
    assert loader.seq_len == 96  # bptt + 25 rounded up to 8
    batches = list(loader.batches(2))
    assert {b["inputs"].shape for b in batches} == {(4, 96)}
    assert {b["token_mask"].shape for b in batches} == {(4, 96)}
    assert [float(b["reset"][0]) for b in batches] == [1.0] + [0.0] * (len(batches) - 1)
    lens = loader.seq_lens(2)
    assert lens.sum() == loader.steps and lens.max() <= 95 and lens.min() >= 1
    core = lens[:-5]  # the last few may be clamped to end on the last token
    assert core.min() >= 5 and 60 < core.mean() < 75
    assert (core < 50).sum() >= 1  # fastai's bptt / 2 with probability 0.05
    assert abs(expected_seq_len(70, 95) - 67.8) < 0.3


def test_lm_deterministic_per_epoch_and_resumable():
    docs = fake_docs(100)
    a = LMLoader(docs, batch_size=8, bptt=30, shuffle=True, seed=5)
    b = LMLoader(docs, batch_size=8, bptt=30, shuffle=True, seed=5)
    first, again = list(a.batches(1)), list(b.batches(1))
    for x, y in zip(first, again):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert not np.array_equal(a.stream(1), a.stream(2))
    resumed = list(a.batches(1, start=3))
    assert len(resumed) == len(first) - 3 and resumed[0]["reset"].all()
    np.testing.assert_array_equal(resumed[0]["inputs"], first[3]["inputs"])
    np.testing.assert_array_equal(resumed[-1]["targets"], first[-1]["targets"])


def test_lm_valid_is_fixed_bptt_in_order():
    docs = fake_docs(50)
    loader = LMLoader(docs, batch_size=5, bptt=70, shuffle=False)
    assert loader.seq_len == 70 and not loader.random_bptt
    np.testing.assert_array_equal(loader.stream(0), np.concatenate(docs))
    lens = loader.seq_lens(0)
    assert (lens[:-1] == 70).all() and lens.sum() == loader.steps
    batches = list(loader.batches(0))
    assert all(b["token_mask"].all() for b in batches[:-1])  # no padding: a model without masking is exact


def test_random_lengths_always_fit():
    rng = np.random.default_rng(0)
    for total, n in [(3, 1), (100, 2), (140, 2), (950, 10), (1000, 14)]:
        lens = random_seq_lens(total, n, 70, 95, rng)
        assert lens.sum() == total and lens.min() >= 1 and lens.max() <= 95


def test_lm_too_little_text():
    with pytest.raises(InputError, match="3 tokens are too few for 2 rows"):
        LMLoader([np.array([2, 5, 6])], batch_size=2)


def test_length_buckets():
    assert length_buckets(1400).tolist() == [8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1400]
    assert length_buckets(72).tolist() == [8, 16, 24, 32, 48, 64, 72]


def clas_data(n=203, seed=0):
    rng = np.random.default_rng(seed)
    docs = [np.concatenate([[2], rng.integers(10, 1000, n_tok - 1)]) for n_tok in rng.integers(3, 300, n)]
    return docs, rng.integers(0, 2, n)


def test_clas_every_document_once_sortish_padded_first():
    docs, labels = clas_data()
    loader = ClasLoader(docs, labels, batch_size=16, shuffle=True, seed=0)
    assert len(loader) == 13
    seen = []
    longest = max(len(d) for d in docs)
    for b, (idx, batch) in enumerate(zip(loader.batch_indices(0), loader.batches(0))):
        real = batch["mask"] > 0
        assert real.sum() == len(idx) and batch["inputs"].shape[0] == 16
        lengths = batch["token_mask"].sum(1)
        np.testing.assert_array_equal(lengths[real], [len(docs[i]) for i in idx])
        assert (np.diff(lengths[real]) <= 0).all()  # sorted within the batch, longest first
        if b == 0:
            assert lengths.max() == longest  # fastai puts the longest batch first
        assert batch["inputs"].shape[1] in loader.buckets and batch["inputs"].shape[1] >= lengths.max()
        for row, i in enumerate(idx):  # padded at the start (pad_first), mask covers the real tokens
            n = len(docs[i])
            np.testing.assert_array_equal(batch["inputs"][row, -n:], docs[i])
            assert (batch["inputs"][row, :-n] == PAD).all() and batch["token_mask"][row, :-n].sum() == 0
            assert batch["targets"][row] == labels[i]
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(len(docs)))
    partial = [b for b in loader.batches(0) if b["mask"].sum() < 16]
    assert len(partial) == 1 and partial[0]["mask"].sum() == 203 % 16


def test_clas_shuffles_per_epoch_deterministically_and_resumes():
    docs, labels = clas_data()
    a = ClasLoader(docs, labels, batch_size=16, shuffle=True, seed=4)
    b = ClasLoader(docs, labels, batch_size=16, shuffle=True, seed=4)
    e1, e1_again, e2 = a.batch_indices(1), b.batch_indices(1), a.batch_indices(2)
    assert all(np.array_equal(x, y) for x, y in zip(e1, e1_again))
    assert not all(np.array_equal(x, y) for x, y in zip(e1, e2))
    resumed = list(a.batches(1, start=5))
    np.testing.assert_array_equal(resumed[0]["inputs"], list(b.batches(1))[5]["inputs"])


def test_clas_valid_sorted_and_truncated_to_max_len():
    docs, labels = clas_data(40)
    loader = ClasLoader(docs, labels, batch_size=8, shuffle=False, max_len=100)
    lengths = np.concatenate([b["token_mask"].sum(1)[b["mask"] > 0] for b in loader.batches(0)])
    assert (np.diff(lengths) <= 0).all() and lengths.max() == 100
    first = next(loader.batches(0))
    i = int(loader.batch_indices(0)[0][0])
    np.testing.assert_array_equal(first["inputs"][0, -100:], docs[i][-100:])  # the last max_len tokens kept
    assert first["inputs"].shape == (8, 104)


def test_clas_errors():
    with pytest.raises(InputError, match="3 documents but labels of shape"):
        ClasLoader([np.array([2, 3])] * 3, [0, 1], batch_size=2)
    with pytest.raises(InputError, match="document 1 has no tokens"):
        ClasLoader([np.array([2, 3]), np.array([], np.int32)], [0, 1], batch_size=2)
