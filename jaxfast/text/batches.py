"""Fixed-shape batches for language models and text classifiers, deterministic per (seed, epoch).

Both loaders follow jaxfast.data.loader's contract (`batches(epoch, start)`, `len`,
`num_rows`, `batch_size`, `sample_inputs`) and yield dicts of numpy arrays:

- 'inputs' [B, T] int32 token ids, 'targets', 'mask' [B] float32 (1 = a real row, as
  ArrayLoader), and 'token_mask' [B, T] float32 (1 = a real token).

LMLoader (fastai v1's LanguageModelLoader): every document (starting with xxbos) is laid
end to end in an order drawn from (seed, epoch); the stream is cut into B contiguous rows
(row r starts at token floor(r * N / B), so no token is dropped); batch k holds the next
seq_len_k tokens of every row, targets the inputs shifted by one. seq_len_k follows fastai:
bptt with probability 0.95 else bptt / 2, then int(normal(that, 5)), at least 5 and at
most bptt + max_extra (fastai's max_len = 25). The count of batches per epoch is fixed,
ceil(longest row / expected seq_len), and the lengths are clamped only as far as needed to
end exactly on the last token. Shapes: every batch is padded to T = bptt + max_extra
rounded up to 8 (96 for bptt 70), so a jitted step compiles once. The valid loader
(random_bptt False, fastai's fixed bptt) has T = bptt: one shape too, and only its last
batch holds padding. Extra key 'reset' [B] float32: 1 on the first batch an iterator
yields (epoch start, or the batch a resume starts from), when the hidden state must be
zeroed; otherwise the state carries over from the previous batch. Padded positions
(token_mask 0) sit after the real ones in each row: a stateful model must keep its hidden
state unchanged over them (h = m * h_new + (1 - m) * h) so that the next batch goes on
from the last real token, and the loss is sum(token_loss * token_mask) / sum(token_mask).

ClasLoader (fastai v1's SortishSampler / SortSampler + pad_collate): training batches are
chunks of similar length (random chunks of 50 batches sorted by length, cut into batches,
the batch holding the longest document first, the others shuffled); evaluation batches go
by decreasing length. Documents are padded at the start (fastai's pad_first=True) with the
pad id; documents longer than `max_len` keep their last `max_len` tokens (fastai's
classifier pools over the last max_len outputs too). T is the batch's longest document
rounded up to a bucket of `length_buckets` (8, 16, 24, 32, 48, 64, 96, ... : at most a
third is padding, two shapes per doubling), so a run compiles a handful of shapes. The last
partial batch repeats real rows with 'mask' 0, as ArrayLoader.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np

from jaxfast.errors import InputError


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _ids_list(docs: Sequence, name: str) -> list[np.ndarray]:
    out = [np.asarray(d, dtype=np.int32) for d in docs]
    for i, d in enumerate(out):
        if d.ndim != 1:
            raise InputError(f"{name}: document {i} must be a 1-D array of token ids, got shape {d.shape}")
    return out


def _normal_cdf(x: float, mu: float, sigma: float) -> float:
    return 0.5 * (1.0 + math.erf((x - mu) / (sigma * math.sqrt(2.0))))


def expected_seq_len(bptt: int, max_len: int, p_full: float = 0.95, std: float = 5.0, min_len: int = 5) -> float:
    """Mean of fastai's random sequence length: clamp(int(normal(bptt or bptt/2, std)), min_len, max_len)."""

    def mean_for(mu: float) -> float:
        total = _normal_cdf(min_len, mu, std) * min_len  # int(x) < min_len for x < min_len
        for k in range(min_len, max_len):
            total += (_normal_cdf(k + 1, mu, std) - _normal_cdf(k, mu, std)) * k
        return total + (1.0 - _normal_cdf(max_len, mu, std)) * max_len

    return p_full * mean_for(bptt) + (1.0 - p_full) * mean_for(bptt / 2.0)


def random_seq_lens(total: int, n_batches: int, bptt: int, max_len: int, rng: np.random.Generator) -> np.ndarray:
    """fastai's random lengths for `n_batches` batches, clamped where needed to sum to `total`
    with every batch between 1 and max_len tokens (requires n_batches <= total <= n_batches * max_len)."""
    lens = np.empty(n_batches, np.int64)
    left = total
    for k in range(n_batches):
        after = n_batches - k - 1
        target = bptt if rng.random() < 0.95 else bptt / 2.0
        length = min(max(5, int(rng.normal(target, 5))), max_len)
        length = min(max(length, left - after * max_len, 1), left - after)
        lens[k] = length
        left -= length
    return lens


class LMLoader:
    """Language-model batches over a stream of documents (see the module docstring)."""

    def __init__(self, docs: Sequence, batch_size: int, bptt: int = 70, shuffle: bool = False, seed: int = 0,
                 random_bptt: bool | None = None, max_extra: int = 25, pad_id: int = 1, name: str = "lm"):
        if batch_size < 1 or bptt < 1:
            raise InputError(f"{name}: batch_size and bptt must be >= 1, got {batch_size}, {bptt}")
        self.docs = _ids_list(docs, name)
        self.batch_size, self.bptt, self.shuffle, self.seed = batch_size, bptt, shuffle, seed
        self.random_bptt = shuffle if random_bptt is None else random_bptt
        self.pad_id, self.name = pad_id, name
        self.num_tokens = int(sum(len(d) for d in self.docs))
        if self.num_tokens < 2 * batch_size:
            raise InputError(f"{name}: {self.num_tokens} tokens are too few for {batch_size} rows of at least "
                             f"2 tokens; lower the batch size")
        self.row_starts = (np.arange(batch_size + 1) * self.num_tokens) // batch_size
        self.row_lens = np.diff(self.row_starts)
        self.steps = int(self.row_lens.max()) - 1  # input positions of the longest row
        if self.random_bptt:
            self.max_len = bptt + max_extra
            self.seq_len = _round_up(self.max_len, 8)
            mean = expected_seq_len(bptt, self.max_len)
            self._len = max(1, math.ceil(self.steps / mean))
        else:  # exactly bptt: only the epoch's last batch has padding
            self.max_len = self.seq_len = bptt
            self._len = math.ceil(self.steps / bptt)

    def __len__(self) -> int:
        """Batches per epoch (the same every epoch)."""
        return self._len

    @property
    def num_rows(self) -> int:
        """Predicted tokens per epoch (every token but the first of each row)."""
        return self.num_tokens - self.batch_size

    def doc_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.docs))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.docs))

    def stream(self, epoch: int) -> np.ndarray:
        """All the tokens of `epoch` end to end, in the epoch's document order."""
        return np.concatenate([self.docs[i] for i in self.doc_order(epoch)])

    def seq_lens(self, epoch: int) -> np.ndarray:
        """Real length of each batch of `epoch` (the longest row's tokens per batch)."""
        if not self.random_bptt:
            return np.minimum(self.bptt, self.steps - self.bptt * np.arange(self._len))
        rng = np.random.default_rng([self.seed, epoch, 1])
        return random_seq_lens(self.steps, self._len, self.bptt, self.max_len, rng)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[dict]:
        """Batches of `epoch` from batch index `start`; the first one yielded has reset = 1."""
        stream = self.stream(epoch)
        width = int(self.row_lens.max()) + self.seq_len + 1
        grid = np.full((self.batch_size, width), self.pad_id, np.int32)
        for r in range(self.batch_size):
            grid[r, : self.row_lens[r]] = stream[self.row_starts[r] : self.row_starts[r + 1]]
        lens = self.seq_lens(epoch)
        offsets = np.concatenate([[0], np.cumsum(lens)])
        t = np.arange(self.seq_len)
        for b in range(start, self._len):
            p = int(offsets[b])
            real = (t < lens[b])[None, :] & (p + t + 1 < self.row_lens[:, None])
            inputs = np.where(real, grid[:, p : p + self.seq_len], self.pad_id)
            targets = np.where(real, grid[:, p + 1 : p + 1 + self.seq_len], self.pad_id)
            yield {
                "inputs": inputs.astype(np.int32),
                "targets": targets.astype(np.int32),
                "mask": real.any(axis=1).astype(np.float32),
                "token_mask": real.astype(np.float32),
                "reset": np.full(self.batch_size, float(b == start), np.float32),
            }

    def sample_inputs(self) -> np.ndarray:
        return np.full((self.batch_size, self.seq_len), self.pad_id, np.int32)


def length_buckets(max_len: int, smallest: int = 8) -> np.ndarray:
    """Padded lengths allowed: 8, 16, 24, 32, 48, 64, 96, 128, ... (2^k and 1.5 * 2^k, multiples
    of 8) up to max_len rounded up to 8, which is the last bucket."""
    top = _round_up(max_len, 8)
    sizes, k = set(), smallest
    while k < top:
        sizes.update(x for x in (k, _round_up(k * 3 // 2, 8)) if x < top)
        k *= 2
    return np.array(sorted(sizes | {top}), np.int64)


def sortish_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, chunk_batches: int = 50) -> list:
    """fastai's SortishSampler as a list of batches of indices: random chunks of
    chunk_batches * batch_size sorted by decreasing length, cut into batches; the batch
    with the longest first document goes first, the others in random order."""
    idxs = rng.permutation(len(lengths))
    size = batch_size * chunk_batches
    order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in np.split(idxs, range(size, len(idxs), size))])
    batches = np.split(order, range(batch_size, len(order), batch_size))
    first = int(np.argmax([lengths[b[0]] for b in batches]))
    batches[0], batches[first] = batches[first], batches[0]
    rest = [batches[i] for i in 1 + rng.permutation(len(batches) - 1)]
    return [batches[0]] + rest


class ClasLoader:
    """Classifier batches: length-sorted(-ish), padded first, bucketed lengths (module docstring)."""

    def __init__(self, docs: Sequence, labels, batch_size: int, shuffle: bool = False, seed: int = 0,
                 pad_id: int = 1, pad_first: bool = True, max_len: int = 1400, name: str = "clas"):
        self.docs = _ids_list(docs, name)
        self.labels = np.asarray(labels, np.int32)
        if len(self.docs) == 0:
            raise InputError(f"{name}: the dataset is empty (0 documents)")
        if self.labels.shape != (len(self.docs),):
            raise InputError(f"{name}: {len(self.docs)} documents but labels of shape {self.labels.shape}")
        if batch_size < 1 or max_len < 1:
            raise InputError(f"{name}: batch_size and max_len must be >= 1, got {batch_size}, {max_len}")
        empty = [i for i, d in enumerate(self.docs) if len(d) == 0]
        if empty:
            raise InputError(f"{name}: document {empty[0]} has no tokens")
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.pad_id, self.pad_first, self.max_len, self.name = pad_id, pad_first, max_len, name
        self.lengths = np.minimum([len(d) for d in self.docs], max_len)
        self.buckets = length_buckets(max_len)

    def __len__(self) -> int:
        return -(-len(self.docs) // self.batch_size)

    @property
    def num_rows(self) -> int:
        return len(self.docs)

    def batch_indices(self, epoch: int) -> list:
        """Document indices of every batch of `epoch`."""
        if self.shuffle:
            return sortish_batches(self.lengths, self.batch_size, np.random.default_rng([self.seed, epoch]))
        order = np.argsort(-self.lengths, kind="stable")
        return np.split(order, range(self.batch_size, len(order), self.batch_size))

    def padded_len(self, longest: int) -> int:
        return int(self.buckets[np.searchsorted(self.buckets, longest)])

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[dict]:
        for idx in self.batch_indices(epoch)[start:]:
            real = len(idx)
            if real < self.batch_size:
                idx = np.concatenate([idx, np.resize(idx, self.batch_size - real)])
            width = self.padded_len(int(self.lengths[idx].max()))
            inputs = np.full((self.batch_size, width), self.pad_id, np.int32)
            token_mask = np.zeros((self.batch_size, width), np.float32)
            for row, i in enumerate(idx):
                tokens = self.docs[i][-self.max_len:]
                cols = slice(width - len(tokens), width) if self.pad_first else slice(0, len(tokens))
                inputs[row, cols] = tokens
                token_mask[row, cols] = 1.0
            mask = np.zeros(self.batch_size, np.float32)
            mask[:real] = 1.0
            yield {"inputs": inputs, "targets": self.labels[idx], "mask": mask, "token_mask": token_mask}

    def sample_inputs(self) -> np.ndarray:
        return next(self.batches(0))["inputs"]
