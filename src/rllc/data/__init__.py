"""Data for training and probing: corpora, tokenizer, token arrays, synthetic batches.

See docs/data.md for the corpora, the context format and the exact
definitions of the synthetic probe batches and of the probe structure
injected into training batches (`Injector`).
"""

from rllc.data.corpora import (
    BUILTIN_CORPORA,
    Corpus,
    clean_play_markdown,
    concat_corpora,
    content_hash,
    load_corpus,
    stdlib_code_files,
)
from rllc.data.errors import CorpusUnavailableError, DataError, DataFileNotFoundError
from rllc.data.inject import INJECT_KINDS, Injection, Injector, check_inject
from rllc.data.synthetic import (
    InductionBatch,
    KeyRetrievalBatch,
    dyck_batch,
    induction_batch,
    key_retrieval_batch,
    random_tokens,
    repeated_random,
)
from rllc.data.tokenizer import (
    BOS_ID,
    BOS_TOKEN,
    EOT_ID,
    EOT_TOKEN,
    N_SPECIAL,
    SPECIAL_TOKENS,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from rllc.data.tokens import (
    TokenDataset,
    load_token_array,
    token_cache_path,
    token_dtype,
    tokenize_corpus,
)

__all__ = [
    "BOS_ID",
    "BOS_TOKEN",
    "BUILTIN_CORPORA",
    "Corpus",
    "CorpusUnavailableError",
    "DataError",
    "DataFileNotFoundError",
    "EOT_ID",
    "EOT_TOKEN",
    "INJECT_KINDS",
    "Injection",
    "Injector",
    "InductionBatch",
    "KeyRetrievalBatch",
    "N_SPECIAL",
    "SPECIAL_TOKENS",
    "TokenDataset",
    "check_inject",
    "clean_play_markdown",
    "concat_corpora",
    "content_hash",
    "dyck_batch",
    "induction_batch",
    "key_retrieval_batch",
    "load_corpus",
    "load_token_array",
    "load_tokenizer",
    "random_tokens",
    "repeated_random",
    "save_tokenizer",
    "stdlib_code_files",
    "token_cache_path",
    "token_dtype",
    "tokenize_corpus",
    "train_tokenizer",
]
