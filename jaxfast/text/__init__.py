"""Text data for fastai's lessons 3-4 (IMDB, ULMFiT): tokenizer, vocab, sources, batches.

Names are imported lazily: tokenizer worker processes import this package, and they must
not pay for JAX (which jaxfast.text.databunch pulls in through jaxfast.data.loader).
"""

import importlib

_EXPORTS = {
    "rules": ("UNK", "PAD", "BOS", "EOS", "FLD", "TK_MAJ", "TK_UP", "TK_REP", "TK_WREP", "SPECIAL_TOKENS",
              "fix_html", "replace_rep", "replace_wrep", "spec_add_spaces", "rm_useless_spaces",
              "replace_all_caps", "deal_caps", "join_fields"),
    "tokenize": ("Tokenizer", "spacy_version"),
    "regex_split": ("regex_split",),
    "vocab": ("Vocab",),
    "sources": ("TextSource", "TextSplit", "read_texts_csv", "read_imdb_folder", "load_imdb_tfds",
                "load_text_source", "split_by_rand_pct", "IMDB_URL"),
    "batches": ("LMLoader", "ClasLoader", "length_buckets", "sortish_batches", "expected_seq_len"),
    "databunch": ("TextDataBunch", "TokenizedText", "tokenize_source", "lm_databunch", "clas_databunch"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'jaxfast.text' has no attribute {name!r}")
    return getattr(importlib.import_module(f"jaxfast.text.{_WHERE[name]}"), name)
