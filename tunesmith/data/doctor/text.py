"""Text helpers for Chinese and English without a segmenter: scripts, units, n-grams, shingles.

Units ("tokens" for distinct-n, ROUGE-L and shingling) are single CJK characters and Latin words: the usual
character-level treatment of Chinese in n-gram metrics, which needs no word segmenter (jieba etc.).
"""

from __future__ import annotations

import re
import unicodedata

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
CJK_CHAR = re.compile(f"[{_CJK}]")
_UNITS = re.compile(f"[{_CJK}]|[A-Za-z0-9]+(?:['’][A-Za-z]+)?|[^\\W_{_CJK}]+")
_LATIN = re.compile(r"[A-Za-z]")
_CODE_FENCE = re.compile(r"```.*?(```|$)|`[^`\n]+`", re.S)
_CODE_HINTS = re.compile(r"(^|\n)\s*(def |class |import |#include|public |function |SELECT |for \(|if \(|return |"
                         r"<\w+[^>]*>|\}|\{|//)", re.I)


def units(text: str) -> list[str]:
    """CJK characters, lowercase Latin words/numbers and words of other scripts, in order."""
    return [u.lower() for u in _UNITS.findall(text)]


def script_counts(text: str) -> tuple[int, int]:
    """(CJK characters, Latin words of 2+ letters) outside code: the two languages' weights in a text."""
    text = strip_code(text)
    return len(CJK_CHAR.findall(text)), len(re.findall(r"[A-Za-z]{2,}", text))


def language(text: str) -> str | None:
    """'zh', 'en', or None when the text has too few letters to tell (numbers, symbols, code)."""
    cjk, latin_words = script_counts(text)
    if cjk + latin_words < 3:
        return None
    return "zh" if cjk >= latin_words else "en"


def cjk_share(text: str) -> float:
    """Share of CJK characters among letters (CJK characters + Latin letters / 5, a rough word count)."""
    cjk = len(CJK_CHAR.findall(text))
    latin = len(_LATIN.findall(text)) / 5
    return cjk / (cjk + latin) if cjk + latin else 0.0


def strip_code(text: str) -> str:
    """Text without fenced code blocks and inline `code` (their punctuation and language follow other rules)."""
    return _CODE_FENCE.sub(" ", text)


def looks_like_code(text: str) -> bool:
    return "```" in text or len(_CODE_HINTS.findall(text)) >= 2


def ngrams(items: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(items[i:i + n]) for i in range(len(items) - n + 1)]


def normalize(text: str) -> str:
    """For exact-duplicate comparison: NFKC (full/half width folded), lowercase, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def shingles(text: str, size: int = 5) -> set[str]:
    """Character `size`-grams of the normalised text without spaces; short texts give themselves."""
    compact = normalize(text).replace(" ", "")
    if len(compact) <= size:
        return {compact} if compact else set()
    return {compact[i:i + size] for i in range(len(compact) - size + 1)}


def rouge_l(a: list[str], b: list[str]) -> float:
    """ROUGE-L F1 between two unit sequences.

    Written here because `rouge-score` tokenises away every non-Latin character (Chinese scores 0);
    on units (CJK characters, Latin words) the usual LCS definition works for both languages.
    """
    if not a or not b:
        return 0.0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    lcs = previous[-1]
    if not lcs:
        return 0.0
    precision, recall = lcs / len(b), lcs / len(a)
    return 2 * precision * recall / (precision + recall)
