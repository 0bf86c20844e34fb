"""Token strings on dashboards carry the spacing the tokenizer implies.

Per-id decoding ran a word-level tokenizer's words together ("oldmanpaintedthelamp").
Checked on four decoders built offline with ``tokenizers`` (word-level with the shipped
organisms' WordPiece decoder, ``##`` continuation pieces, SentencePiece-style Metaspace,
byte-level BPE): the per-token strings, joined, read like the tokenizer's own decoding
of the whole text. Then end to end: ``feature_stats`` on a tiny model ->
``feature_records`` -> ``write_dashboards`` shows spaced words."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest

import attribution  # noqa: F401  (BLAS before mlx)
from attribution.tokenizer import word_level_tokenizer
from sae.features import token_strings, vocab_strings

WORDS = ["old", "man", "painted", "the", "lamp", ",", "then", "left"]


class Model:
    """The two attributes the token helpers read."""

    def __init__(self, tok):
        self.tokenizer = tok
        self.vocab_size = len(tok)


def _fast(tok_obj, **special):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok_obj, **special)


def test_word_level_tokens_are_spaced():
    tok = word_level_tokenizer(WORDS)
    m = Model(tok)
    ids = tok.encode("the old man painted the lamp , then left")
    per_id = [tok.decode([i]) for i in ids]
    assert "".join(per_id[1:]) == "theoldmanpaintedthelamp,thenleft"  # the bug this fixes
    strs = token_strings(m, ids)
    assert strs[0] == "<bos>" and strs[1:4] == [" the", " old", " man"]
    assert "".join(strs) == tok.decode(ids) == "<bos> the old man painted the lamp , then left"
    vocab = vocab_strings(m)
    assert len(vocab) == len(tok) and vocab[tok.convert_tokens_to_ids("lamp")] == " lamp"
    assert vocab[tok.pad_token_id] == "<pad>" and vocab[tok.unk_token_id] == " <unk>"  # unk stands in for a word


def test_wordpiece_continuations_join():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"[UNK]": 0, "the": 1, "paint": 2, "##ed": 3, "lamp": 4, "##s": 5}
    t = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok = _fast(t, unk_token="[UNK]")
    ids = tok.encode("the painted lamps", add_special_tokens=False)
    assert ids == [1, 2, 3, 4, 5]
    assert token_strings(Model(tok), ids) == [" the", " paint", "ed", " lamp", "s"]


def test_sentencepiece_style_word_starts():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "▁the": 2, "▁old": 3, "▁lamp": 4, "s": 5}
    t = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>", continuing_subword_prefix=""))
    t.pre_tokenizer = pre_tokenizers.Metaspace()
    t.decoder = decoders.Metaspace()
    tok = _fast(t, unk_token="<unk>", bos_token="<s>")
    ids = tok.encode("the old lamps", add_special_tokens=False)
    assert [tok.decode([i]) for i in ids] == ["the", "old", "lamp", "s"]  # a lone piece loses its space
    assert token_strings(Model(tok), ids) == [" the", " old", " lamp", "s"]
    assert token_strings(Model(tok), [1] + ids)[0] == "<s>"  # BOS is not spaced


def test_byte_level_bpe_unchanged():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, "Ġold": 1, "Ġman": 2, "old": 3, ",": 4}
    t = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    tok = _fast(t, unk_token="<unk>")
    assert token_strings(Model(tok), [3, 2, 4, 1]) == ["old", " man", ",", " old"]
    assert vocab_strings(Model(tok))[1:] == [" old", " man", "old", ","]


@pytest.fixture(scope="module")
def dashboards(tmp_path_factory):
    from attribution import load_model
    from attribution.testing_dicts import random_dictionary
    from attribution.tiny import DEFAULT_WORDS, make_tiny_model
    from sae.features import FeatureStatsConfig, StreamConfig, feature_records, feature_stats
    from viz.dashboard import write_dashboards

    d = tmp_path_factory.mktemp("dash")
    model = load_model(make_tiny_model("llama", d / "llama", seed=0))
    dic = random_dictionary(model.d_model, 1, 8, seed=3, kind="sae", site="resid_post", bias=-0.3)
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(DEFAULT_WORDS, 40)) for _ in range(12)]
    cfg = FeatureStatsConfig(stream=StreamConfig(context_len=32), top_k=3, window=4, n_quantiles=0,
                             hist_range=(1e-2, 1.0), hist_bins_per_decade=5)
    stats = feature_stats(model, dic, texts, cfg)
    recs = feature_records(stats, model)
    return model, stats, recs, write_dashboards(recs, d / "pages")


def test_dashboard_examples_read_as_text(dashboards):
    model, stats, recs, paths = dashboards
    rec = next(r for r in recs if r["top_examples"])
    f = rec["feature"]
    ids = stats.top.tokens[f][0]
    ids = ids[ids >= 0]
    assert "".join(rec["top_examples"][0]["tokens"]).strip() == model.decode(ids).strip()
    assert all(t.startswith(" ") for t in rec["top_examples"][0]["tokens"] if t != "<bos>")
    page = next(p for p in paths if p.name != "index.html" and f"_{f}.html" in p.name).read_text()
    div = re.search(r'<div class="tokens">(.*?)</div>', page).group(1)
    shown = html.unescape(re.sub(r"<[^>]+>", "", div))
    assert shown.strip() == model.decode(ids).strip() and "  " not in shown.strip()
    promoted = rec["logit_effects"]["promoted"][0][0]
    assert promoted.startswith(" ") or promoted.startswith("<")  # logit tokens spaced the same way
