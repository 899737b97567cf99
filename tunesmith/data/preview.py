"""Show rendered samples with the trained tokens told apart from the masked ones."""

from __future__ import annotations

from dataclasses import dataclass

from ..config.schema import DataConfig
from .dataset import load_samples
from .encoding import IGNORE_INDEX, encode_conversation
from .templates.base import ChatTemplate

PLAIN_LEGEND = "[[...]] = trained tokens (the model learns to produce them); everything else is masked"


@dataclass
class PreviewBlock:
    """One previewed sample: its summary line and its text as (text, trained) runs (none when it was dropped)."""

    summary: str
    runs: list[tuple[str, bool]]


def preview_samples(data_cfg: DataConfig, tokenizer, template: ChatTemplate, n: int = 1) -> list[PreviewBlock]:
    """The first `n` samples of the first training dataset, encoded exactly as for training.

    Every configured dataset is read and validated first, so a preview also reports any bad record.
    `plain_preview` turns the blocks into text; the CLI draws them with trained and masked text told apart.
    """
    loaded = [load_samples(spec) for spec in (*data_cfg.train, *data_cfg.validation)]
    samples = loaded[0][:n]
    blocks = []
    for number, sample in enumerate(samples, start=1):
        encoded = encode_conversation(tokenizer, template, sample.messages, data_cfg.max_length, data_cfg.train_on)
        where = f"{sample.record.file}, {sample.record.unit} {sample.record.line}"
        if encoded is None:
            blocks.append(PreviewBlock(f"sample {number} ({where}): dropped, no reply token fits in "
                                       f"max_length={data_cfg.max_length}", []))
            continue
        supervised = sum(label != IGNORE_INDEX for label in encoded["labels"])
        summary = (f"sample {number} ({where}): {encoded['length']} tokens, {supervised} trained"
                   + (", truncated" if encoded["truncated"] else ""))
        blocks.append(PreviewBlock(summary, _runs(tokenizer, encoded["input_ids"], encoded["labels"])))
    return blocks


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


def plain_preview(blocks: list[PreviewBlock]) -> str:
    """The blocks as text, trained text wrapped in [[...]]."""
    parts = [PLAIN_LEGEND]
    for block in blocks:
        body = "".join(f"[[{text}]]" if trained else text for text, trained in block.runs)
        parts.append(f"=== {block.summary} ===\n{body}" if block.runs else f"=== {block.summary} ===")
    return "\n\n".join(parts)
