"""Offline word-level tokenizers saved as ordinary Hugging Face tokenizer files.

Used by the tiny test models and the model organisms, so that every model we
build loads through the same ``mlx_lm``/``transformers`` path a real model does.

Algorithm:
  1. Build a ``tokenizers`` WordLevel model over special tokens + the given words
     (ids are assigned in that order, so they are deterministic).
  2. Pre-tokenise on whitespace and punctuation; unknown words map to ``<unk>``.
  3. Prepend ``<bos>`` with a template post-processor (single sequences).
  4. Wrap in ``PreTrainedTokenizerFast`` and ``save_pretrained`` into a directory.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")


def word_level_tokenizer(words: list[str], add_bos: bool = True):
    """A ``PreTrainedTokenizerFast`` over special tokens then ``words`` (deduplicated, in order)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for w in (*SPECIAL_TOKENS, *words):
        if w not in vocab:
            vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
        )
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        pad_token="<pad>",
    )


def save_word_level_tokenizer(words: list[str], out_dir: str | Path, add_bos: bool = True):
    """Build and save a word-level tokenizer into ``out_dir``; returns the tokenizer."""
    tok = word_level_tokenizer(words, add_bos=add_bos)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out_dir))
    return tok
