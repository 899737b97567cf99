"""Verifiable instruction-following checks (in the spirit of IFEval): each is a rule a reply passes or fails.

A check is written as a mapping, e.g. `{type: keywords, words: [Paris]}`; `CHECKS` lists every type with its
parameters. `run_check(spec, reply)` returns True/False and `validate_check(spec)` reports a bad spec as a
ConfigError naming the field.
"""

from __future__ import annotations

import inspect
import json
import re
import unicodedata
from collections.abc import Callable

from ...errors import ConfigError
from .generation import word_tokens

_FENCE = re.compile(r"^```[\w-]*\s*\n?(.*?)\n?```$", re.DOTALL)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+", re.MULTILINE)
# Unicode script ranges for the language check. Scripts, not languages: written by hand because the
# language-identification packages are large, non-deterministic on short replies, or need downloaded models;
# telling apart languages that share a script (English vs French) is out of its reach and documented so.
_SCRIPTS = {
    "zh": re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"),
    "ja": re.compile(r"[\u3040-\u30ff]"),
    "ko": re.compile(r"[\uac00-\ud7af\u1100-\u11ff]"),
    "ru": re.compile(r"[\u0400-\u04ff]"),
    "ar": re.compile(r"[\u0600-\u06ff]"),
    "latin": re.compile(r"[A-Za-z\u00c0-\u024f]"),
}
_LANGUAGE_SCRIPT = {"zh": "zh", "ja": "ja", "ko": "ko", "ru": "ru", "ar": "ar", "en": "latin", "fr": "latin",
                    "de": "latin", "es": "latin", "it": "latin", "pt": "latin", "latin": "latin"}


def _strip_fence(text: str) -> str:
    text = text.strip()
    match = _FENCE.match(text)
    return match.group(1).strip() if match else text


def check_json(reply: str, keys: list[str] | None = None) -> bool:
    """The reply (optionally inside a ``` fence) is valid JSON; with `keys`, an object holding all of them."""
    try:
        value = json.loads(_strip_fence(reply))
    except ValueError:
        return False
    return not keys or isinstance(value, dict) and all(k in value for k in keys)


def check_keywords(reply: str, words: list[str]) -> bool:
    """Every word occurs (case-insensitive)."""
    low = reply.casefold()
    return all(w.casefold() in low for w in words)


def check_forbidden(reply: str, words: list[str]) -> bool:
    """None of the words occurs (case-insensitive)."""
    low = reply.casefold()
    return not any(w.casefold() in low for w in words)


def script_shares(text: str) -> dict[str, float]:
    """Share of each script among the letters of `text` (Han counts as zh, kana as ja)."""
    counts = {name: len(pattern.findall(text)) for name, pattern in _SCRIPTS.items()}
    total = sum(counts.values())
    return {name: count / total for name, count in counts.items()} if total else {}


def check_language(reply: str, lang: str, min_share: float = 0.5) -> bool:
    """At least `min_share` of the reply's letters are in the language's script (zh, ja, ko, ru, ar; en and
    other Latin-script languages all count as `latin`). Japanese text mixes kana and Han, so ja counts both."""
    shares = script_shares(reply)
    script = _LANGUAGE_SCRIPT[lang]
    share = shares.get(script, 0.0) + (shares.get("zh", 0.0) if script == "ja" else 0.0)
    return share >= min_share


def check_length(reply: str, min_words: int | None = None, max_words: int | None = None,
                 min_chars: int | None = None, max_chars: int | None = None) -> bool:
    """Words as in ROUGE (a CJK character is a word); characters exclude whitespace."""
    words = len(word_tokens(reply))
    chars = len("".join(reply.split()))
    return ((min_words is None or words >= min_words) and (max_words is None or words <= max_words)
            and (min_chars is None or chars >= min_chars) and (max_chars is None or chars <= max_chars))


def check_starts_with(reply: str, text: str) -> bool:
    return reply.strip().casefold().startswith(text.casefold())


def check_ends_with(reply: str, text: str) -> bool:
    return reply.strip().casefold().endswith(text.casefold())


def check_regex(reply: str, pattern: str) -> bool:
    return re.search(pattern, reply, re.MULTILINE) is not None


def check_bullets(reply: str, count: int | None = None, min: int | None = None, max: int | None = None) -> bool:
    """Lines starting with -, *, • or a number ("1." / "1)")."""
    n = len(_BULLET.findall(reply))
    return (count is None or n == count) and (min is None or n >= min) and (max is None or n <= max)


def check_lowercase(reply: str) -> bool:
    return reply == reply.lower()


def check_uppercase(reply: str) -> bool:
    return reply == reply.upper()


def check_no_commas(reply: str) -> bool:
    return not any(c in reply for c in ",，")


def check_paragraphs(reply: str, count: int) -> bool:
    """Exactly `count` paragraphs separated by blank lines."""
    return len([p for p in re.split(r"\n\s*\n", reply.strip()) if p.strip()]) == count


CHECKS: dict[str, Callable[..., bool]] = {
    "json": check_json, "keywords": check_keywords, "forbidden": check_forbidden, "language": check_language,
    "length": check_length, "starts_with": check_starts_with, "ends_with": check_ends_with, "regex": check_regex,
    "bullets": check_bullets, "lowercase": check_lowercase, "uppercase": check_uppercase,
    "no_commas": check_no_commas, "paragraphs": check_paragraphs,
}


def check_name(spec: dict) -> str:
    params = ",".join(f"{k}={v}" for k, v in spec.items() if k != "type")
    return f"{spec['type']}({params})" if params else spec["type"]


def validate_check(spec, where: str) -> dict:
    """The spec if it names a known check with acceptable parameters, else a ConfigError at `where`."""
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError("a check is a mapping with a 'type'", where=where,
                          hint=f"e.g. {{type: keywords, words: [Paris]}}; types: {', '.join(CHECKS)}")
    if spec["type"] not in CHECKS:
        raise ConfigError(f"unknown check type {spec['type']!r}", where=where, hint=f"one of {', '.join(CHECKS)}")
    signature = inspect.signature(CHECKS[spec["type"]])
    params = {k: v for k, v in spec.items() if k != "type"}
    try:
        signature.bind("", **params)
    except TypeError as exc:
        accepted = [p for p in signature.parameters if p != "reply"]
        raise ConfigError(f"check {spec['type']!r}: {exc}", where=where,
                          hint=f"parameters: {', '.join(accepted) or '(none)'}") from None
    if spec["type"] == "language" and params.get("lang") not in _LANGUAGE_SCRIPT:
        raise ConfigError(f"unknown language {params.get('lang')!r}", where=where,
                          hint=f"one of {', '.join(_LANGUAGE_SCRIPT)}")
    if spec["type"] == "regex":
        try:
            re.compile(params["pattern"])
        except re.error as exc:
            raise ConfigError(f"bad regular expression: {exc}", where=where) from None
    return spec


def run_check(spec: dict, reply: str) -> bool:
    params = {k: v for k, v in spec.items() if k != "type"}
    return bool(CHECKS[spec["type"]](unicodedata.normalize("NFC", reply), **params))
