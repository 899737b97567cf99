"""Reference-based scores of generated text: exact match, ROUGE-L, BLEU and chrF (the last two from sacrebleu).

All scores are in [0, 1]. Corpus-level BLEU/chrF follow sacrebleu's definitions exactly (so they match papers
that report sacrebleu numbers, divided by 100); exact match and ROUGE-L are means over samples.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence

# Han, Hiragana/Katakana and Hangul characters: scripts written without spaces between words.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]|[^\W_]+", re.UNICODE)
_PUNCT = string.punctuation + "。，、；：？！…“”‘’（）《》【】「」—·"


def has_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def normalize_answer(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed, surrounding punctuation removed (so "Paris." equals "paris")."""
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return text.strip(_PUNCT + " ")


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def word_tokens(text: str) -> list[str]:
    """Lower-cased words; every CJK character is its own token.

    Written by hand because the usual ROUGE package (rouge-score) keeps only [a-z0-9] and so scores Chinese as
    empty; character tokens for CJK are the common convention for Chinese ROUGE.
    """
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: the longest common subsequence of tokens against both lengths."""
    pred, ref = word_tokens(prediction), word_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def _bleu_tokenizer(references: Sequence[str]) -> str:
    return "zh" if any(has_cjk(r) for r in references) else "13a"


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu; its `zh` tokenizer when the references hold CJK text), in [0, 1]."""
    import sacrebleu

    if not predictions:
        return 0.0
    result = sacrebleu.corpus_bleu(list(predictions), [list(references)], tokenize=_bleu_tokenizer(references))
    return result.score / 100


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu: character 6-grams, beta 2), in [0, 1]; language-independent."""
    import sacrebleu

    if not predictions:
        return 0.0
    return sacrebleu.corpus_chrf(list(predictions), [list(references)]).score / 100


GENERATION_METRICS = ("exact_match", "rouge_l", "bleu", "chrf")


def generation_scores(predictions: Sequence[str], references: Sequence[str],
                      metrics: Sequence[str] = GENERATION_METRICS) -> dict[str, float]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    n = max(len(predictions), 1)
    out: dict[str, float] = {}
    for name in metrics:
        if name == "exact_match":
            out[name] = sum(map(exact_match, predictions, references)) / n
        elif name == "rouge_l":
            out[name] = sum(map(rouge_l, predictions, references)) / n
        elif name == "bleu":
            out[name] = bleu(predictions, references)
        elif name == "chrf":
            out[name] = chrf(predictions, references)
        else:
            raise ValueError(f"unknown generation metric {name!r}")
    return out
