"""Report text -> token ids: lower-cased word unigrams and bigrams hashed into a fixed vocabulary.

No tokenizer can be downloaded here (no model hub), and radiology reports use a small vocabulary,
so a hashing tokenizer (the "hashing trick", as scikit-learn's HashingVectorizer does for counts)
is enough: stable across machines (blake2b, not Python's salted ``hash``), no vocabulary file to
ship. Id 0 is padding.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

VOCAB_SIZE = 4096
MAX_TOKENS = 96
_WORD = re.compile(r"[a-z]+")


def _bucket(token: str) -> int:
    digest = hashlib.blake2b(token.encode(), digest_size=4).digest()
    return 1 + int.from_bytes(digest, "little") % (VOCAB_SIZE - 1)


def tokens(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    return words + [f"{a}_{b}" for a, b in zip(words, words[1:])]


def encode(texts: list[str], max_tokens: int = MAX_TOKENS) -> np.ndarray:
    """int32 [len(texts), max_tokens] token ids, 0-padded (longer texts are cut)."""
    out = np.zeros((len(texts), max_tokens), dtype=np.int32)
    for i, text in enumerate(texts):
        ids = [_bucket(t) for t in tokens(text)][:max_tokens]
        out[i, : len(ids)] = ids
    return out
