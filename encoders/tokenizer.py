"""The report tokenizer lives in ``core.tokenizer`` (numpy only, so the worker can tokenize a report
without the deep-learning stack); re-exported here for the encoders that read its ids."""

from icuwatch.core.tokenizer import MAX_TOKENS, VOCAB_SIZE, encode, tokens

__all__ = ["MAX_TOKENS", "VOCAB_SIZE", "encode", "tokens"]
