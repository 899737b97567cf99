"""Conversation → token ids and labels, with only the assistant's tokens supervised.

The rendered text is tokenised once; a token is supervised when its character span overlaps an
assistant span of the rendering. The mask is then checked by decoding the supervised tokens, so a
template or tokenizer that breaks the character/token correspondence fails loudly instead of
silently training on the prompt.
"""

from __future__ import annotations

import unicodedata

from ..errors import DataError, ModelError
from .formats import Message
from .templates.base import ChatTemplate

IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy skips
_SLACK = 16  # characters a reply's boundary tokens may add to it when decoded


def encode_conversation(tokenizer, template: ChatTemplate, messages: list[Message], max_length: int,
                        train_on: str = "all_assistant") -> dict | None:
    """{input_ids, labels, length, truncated}, or None when no supervised token survives truncation.

    Too long: drop the earliest whole exchanges first, then shorten the user's text in the prompt
    (keeping the template's headers), and only when the reply alone does not fit, cut its end.
    """
    if train_on not in ("all_assistant", "last_assistant"):
        raise ValueError(f"train_on must be all_assistant or last_assistant, not {train_on!r}")
    truncated = False
    while True:
        rendered = template.render(messages)
        spans = rendered.assistant_spans if train_on == "all_assistant" else rendered.assistant_spans[-1:]
        ids, offsets = _tokenize(tokenizer, rendered.text)
        owners = _span_owners(offsets, spans)
        labels = [tok if owner is not None else IGNORE_INDEX for tok, owner in zip(ids, owners)]
        _check_mask(tokenizer, rendered.text, spans, ids, owners)
        if len(ids) <= max_length or _count_replies(messages) <= 1:
            break
        messages, truncated = _drop_first_exchange(messages), True
    if len(ids) > max_length:
        ids, labels = _shorten(ids, labels, _cuttable(offsets, rendered.user_spans), max_length)
        truncated = True
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": ids, "labels": labels, "length": len(ids), "truncated": truncated}


def needs_special_tokens(tokenizer, text: str) -> bool:
    """Whether to let the tokenizer add BOS: not when the text already starts with it (most chat templates)."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and text.startswith(bos))


def _tokenize(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError("label masking needs a fast tokenizer (character offsets)",
                         hint="load the tokenizer with use_fast=True / ship a tokenizer.json")
    encoded = tokenizer(text, add_special_tokens=needs_special_tokens(tokenizer, text),
                        return_offsets_mapping=True)
    return list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]


def _span_owners(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int | None]:
    """For each token, the index of the span it overlaps, else None (one pass: both are in text order).

    Overlap, not containment: a token such as "▁Hello" carries the prompt's trailing space but is the
    reply's first word, and the model must learn to produce it. Zero-width tokens (an added BOS) never count.
    """
    owners, j = [], 0
    for start, end in offsets:
        while j < len(spans) and spans[j][1] <= start:
            j += 1
        inside = end > start and j < len(spans) and spans[j][0] < end
        owners.append(j if inside else None)
    return owners


def _check_mask(tokenizer, text: str, spans, ids, owners) -> None:
    """Decode the supervised tokens of each span: they must spell the span's text."""
    for index, (span_start, span_end) in enumerate(spans):
        chosen = [tok for tok, owner in zip(ids, owners) if owner == index]
        decoded = _canonical(tokenizer.decode(chosen, skip_special_tokens=False))
        expected = _canonical(text[span_start:span_end])
        unk = getattr(tokenizer, "unk_token_id", None)
        lossy = unk is not None and unk in chosen  # unknown characters cannot decode back
        # Boundary tokens may carry a few characters beyond the span (see _span_owners), never more.
        if not chosen or not lossy and (expected not in decoded or len(decoded) > len(expected) + _SLACK):
            raise DataError(f"label mask does not match the tokens: expected the reply {expected[:60]!r}, "
                            f"supervised tokens decode to {decoded[:60]!r}",
                            hint="the template's reply spans and the tokenizer's character offsets disagree; "
                                 "try another data.template")


def _canonical(text: str) -> str:
    # Tokenizers may normalise unicode and whitespace (and SentencePiece writes spaces as "▁"),
    # so compare the characters that carry meaning.
    return "".join(unicodedata.normalize("NFKC", text).replace("\u2581", " ").split())


def _count_replies(messages: list[Message]) -> int:
    return sum(m["role"] == "assistant" for m in messages)


def _drop_first_exchange(messages: list[Message]) -> list[Message]:
    """Remove the first user turn and its reply; a system prompt stays."""
    head = 1 if messages[0]["role"] == "system" else 0
    return messages[:head] + messages[head + 2:]


def _cuttable(offsets: list[tuple[int, int]], user_spans: list[tuple[int, int]]) -> set[int]:
    """Token positions lying wholly inside user-written text: what may be cut from the prompt."""
    return {i for i, (start, end) in enumerate(offsets)
            if end > start and any(s <= start and end <= e for s, e in user_spans)}


def _shorten(ids: list[int], labels: list[int], cuttable: set[int], max_length: int) -> tuple[list[int], list[int]]:
    """Fit max_length: drop what follows the reply, then user text from its end, then the reply's end."""
    supervised = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    if not supervised:
        return ids[:max_length], labels[:max_length]
    first, last = supervised[0], supervised[-1]
    prompt, reply = first, last + 1 - first
    cuttable_prompt = sorted((i for i in cuttable if i < first), reverse=True)  # latest user text goes first
    fixed = prompt - len(cuttable_prompt)
    if fixed + reply <= max_length:
        prompt_budget = min(prompt, max_length - reply)
    else:  # the reply must be cut anyway: keep up to half the budget of prompt context
        prompt_budget = min(prompt, max(fixed, max_length // 2))
    removed = set(cuttable_prompt[:prompt - prompt_budget])
    keep = [i for i in range(first) if i not in removed]
    keep += list(range(first, min(last + 1, first + max_length - len(keep))))
    keep += list(range(last + 1, len(ids)))[:max(0, max_length - len(keep))]  # untrained tail, if room
    return [ids[i] for i in keep], [labels[i] for i in keep]
