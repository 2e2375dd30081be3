"""Word-level tokenizer of stvg-vem (team agreement: [PAD]=0, [UNK]=1, [BOS]=2, [EOS]=3).

Phrases are encoded word by word: the model turns each entity phrase into the mean of its word
embeddings (a GloVe-style table), and reconstructs relation predicates word by word. The tokenizer is
a plain :class:`~transformers.PreTrainedTokenizerFast` around a ``tokenizers`` WordLevel model, so it
saves and loads with ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` like any other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN)  # ids 0, 1, 2, 3 in this order
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def _normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.Strip()])


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])


def split_words(text: str) -> list[str]:
    """The words the tokenizer sees in ``text``: NFKC, lower-cased, split on whitespace/punctuation."""
    normalised = _normalizer().normalize_str(text)
    return [piece for piece, _ in _pre_tokenizer().pre_tokenize_str(normalised)]


def build_word_tokenizer(texts: Iterable[str], min_frequency: int = 1) -> PreTrainedTokenizerFast:
    """Build the word-level tokenizer from a corpus.

    Words are numbered after the four special tokens, most frequent first (ties alphabetically, so
    the same corpus always gives the same ids); words seen fewer than ``min_frequency`` times map to
    ``[UNK]``.
    """
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    counts: Counter[str] = Counter()
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"build_word_tokenizer expects strings, got {type(text).__name__}: {text!r}")
        counts.update(split_words(text))
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for word, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if count >= min_frequency and word not in vocab:
            vocab[word] = len(vocab)
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.normalizer = _normalizer()
    backend.pre_tokenizer = _pre_tokenizer()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        model_input_names=["input_ids", "attention_mask"],
    )


def encode_words(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """Word ids of ``text`` with no special tokens (what entity and predicate phrases use)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
