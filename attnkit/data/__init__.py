"""Training data: read a corpus, tokenize and cache it, and sample batches.

Typical use (what ``attnkit train`` does)::

    text = read_corpus(path)                      # only to train the tokenizer
    tok = train_tokenizer("char", text)
    data = prepare_tokens(path, tok, cache_dir)   # cached, memory-mapped
    check_length(data, context_length)
    x, y = get_batch(data.train, batch_size, context_length,
                     batch_generator(seed, step, micro_step, "train"), device)
"""

from attnkit.data.corpus import BUILTIN_NAMES, builtin_corpus, corpus_fingerprint, read_corpus
from attnkit.data.tokens import (
    TokenData,
    batch_generator,
    check_length,
    default_cache_dir,
    get_batch,
    prepare_tokens,
    split_sizes,
    token_dtype,
    tokenize_to_arrays,
)

__all__ = [
    "BUILTIN_NAMES",
    "TokenData",
    "batch_generator",
    "builtin_corpus",
    "check_length",
    "corpus_fingerprint",
    "default_cache_dir",
    "get_batch",
    "prepare_tokens",
    "read_corpus",
    "split_sizes",
    "token_dtype",
    "tokenize_to_arrays",
]
