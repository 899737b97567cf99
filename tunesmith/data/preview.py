"""Show rendered samples with the trained tokens told apart from the masked ones."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text

from ..config.schema import DataConfig
from .dataset import load_samples
from .encoding import IGNORE_INDEX, encode_conversation
from .templates.base import ChatTemplate

TRAINED_STYLE, MASKED_STYLE = "bold green", "dim"
PLAIN_LEGEND = "[[...]] = trained tokens (the model learns to produce them); everything else is masked"


def preview_samples(data_cfg: DataConfig, tokenizer, template: ChatTemplate, n: int = 1, plain: bool = False):
    """The first `n` samples of the first training dataset, encoded exactly as for training.

    Every configured dataset is read and validated first, so a preview also reports any bad record.
    Returns a rich renderable (trained text bold green, masked text dim), or with plain=True a string
    in which trained text is wrapped in [[...]].
    """
    loaded = [load_samples(spec) for spec in (*data_cfg.train, *data_cfg.validation)]
    samples = loaded[0][:n]
    blocks = []
    for number, sample in enumerate(samples, start=1):
        encoded = encode_conversation(tokenizer, template, sample.messages, data_cfg.max_length, data_cfg.train_on)
        where = f"{sample.record.file}, {sample.record.unit} {sample.record.line}"
        if encoded is None:
            blocks.append((f"sample {number} ({where}): dropped, no reply token fits in "
                           f"max_length={data_cfg.max_length}", []))
            continue
        supervised = sum(label != IGNORE_INDEX for label in encoded["labels"])
        summary = (f"sample {number} ({where}): {encoded['length']} tokens, {supervised} trained"
                   + (", truncated" if encoded["truncated"] else ""))
        blocks.append((summary, _runs(tokenizer, encoded["input_ids"], encoded["labels"])))
    return _plain(blocks) if plain else _rich(blocks)


def _runs(tokenizer, ids: list[int], labels: list[int]) -> list[tuple[str, bool]]:
    """(text, trained) pieces. Decoding growing prefixes, not single tokens, keeps multi-byte characters
    and SentencePiece spaces intact."""
    runs, start, shown = [], 0, ""
    for end in range(1, len(ids) + 1):
        if end < len(ids) and (labels[end] != IGNORE_INDEX) == (labels[start] != IGNORE_INDEX):
            continue
        text = tokenizer.decode(ids[:end], skip_special_tokens=False)
        runs.append((text[len(shown):], labels[start] != IGNORE_INDEX))
        shown, start = text, end
    return runs


def _plain(blocks) -> str:
    parts = [PLAIN_LEGEND]
    for summary, runs in blocks:
        body = "".join(f"[[{text}]]" if trained else text for text, trained in runs)
        parts.append(f"=== {summary} ===\n{body}" if runs else f"=== {summary} ===")
    return "\n\n".join(parts)


def _rich(blocks) -> Group:
    legend = Text.assemble(("trained", TRAINED_STYLE), "  ", ("masked (prompt, not trained)", MASKED_STYLE))
    items = [legend]
    for summary, runs in blocks:
        items.append(Text(summary, style="bold"))
        if runs:
            items.append(Text.assemble(*((text, TRAINED_STYLE if trained else MASKED_STYLE) for text, trained in runs)))
    return Group(*items)
