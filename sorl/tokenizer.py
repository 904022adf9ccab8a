"""A character-level tokenizer for the embedded synthetic tasks: one character, one token."""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")  # ids 0, 1, 2
# Every character ArithmeticTask emits, plus all ASCII letters so new formats need no new vocabulary.
ARITHMETIC_ALPHABET = string.digits + "+-*=;:|?" + " \n" + string.ascii_lowercase + string.ascii_uppercase


def build_char_tokenizer(alphabet: str = ARITHMETIC_ALPHABET) -> PreTrainedTokenizerFast:
    """Special tokens take ids 0-2, then each character of ``alphabet`` in order.

    Encoding adds no BOS and no EOS: the trainer appends EOS to targets itself. Padding is on the left
    so batched generation continues right after each prompt. Characters outside ``alphabet`` map to
    ``<unk>``.
    """
    if len(set(alphabet)) != len(alphabet):
        raise ValueError(f"alphabet has repeated characters: {alphabet!r}")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for char in alphabet:
        vocab[char] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # [\s\S] rather than "." so newlines split too (Oniguruma has no (?s) flag).
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()  # concatenate, no spaces between tokens
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
        clean_up_tokenization_spaces=False,  # would drop spaces before "?" and the like
    )
