"""A byte-level BPE tokenizer built offline: GPT-2's kind of tokenizer, without downloading GPT-2's.

Tiny test decoders and decoders trained from scratch need a tokenizer on machines
with no network. Byte-level BPE is what GPT-2 uses, so both go through the same
code path (PreTrainedTokenizerFast, one end-of-text token that also starts and
pads); with no training texts it is the 256 bytes alone, identical in every process.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

END = "<|endoftext|>"


@cache
def _byte_alphabet() -> list[str]:
    """GPT-2's byte-to-printable-character map, in byte order (fixed token ids)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def byte_level_tokenizer(texts: Iterable[str] = (), *, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Bytes plus BPE merges learned from `texts` (none when `texts` is empty)."""
    texts = [t for t in texts if t]
    if texts:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=max(vocab_size, 257), special_tokens=[END],
                                      initial_alphabet=_byte_alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer)
    else:
        vocab = {END: 0, **{ch: i + 1 for i, ch in enumerate(_byte_alphabet())}}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=END, eos_token=END, pad_token=END,
                                   unk_token=END, clean_up_tokenization_spaces=False)
