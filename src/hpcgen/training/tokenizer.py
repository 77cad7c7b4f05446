"""Tokenizers that work offline for models trained from scratch, saved with every snapshot.

- ``bpe``: a byte-level BPE trained (with ``tokenizers``) on the prepared training texts;
- ``char``: one token per character of the training texts (for the rewriting tasks).
Both come back as a transformers ``PreTrainedTokenizerFast`` with <s>, </s>, <pad> and <unk>.
A pretrained model brings its own tokenizer (by name or path).
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def train_bpe(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok)


def char_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    chars = sorted({c for t in texts for c in t})
    vocab = {s: i for i, s in enumerate(SPECIAL)}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return _wrap(tok)


def build_tokenizer(kind: str, texts: list[str], vocab_size: int) -> PreTrainedTokenizerBase:
    if kind == "bpe":
        return train_bpe(texts, vocab_size)
    if kind == "char":
        return char_tokenizer(texts)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(kind)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
