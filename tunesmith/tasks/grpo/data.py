"""GRPO prompts: each record's conversation up to the reply the policy will sample, rendered with the run's template
up to the assistant's generation prefix, plus the record's other scalar fields (the `answer` a reward checks), which
TRL passes to every reward function by name."""

from __future__ import annotations

import random

import datasets

from ...config.schema import DataConfig, DatasetSpec
from ...data.dataset import mix, mix_shares
from ...data.formats import Message, normalize_record, rename_columns
from ...data.readers import Record, read_records
from ...data.templates.base import ChatTemplate
from ...errors import ConfigError, DataError

# Fields that make up the prompt; every other scalar field is a column for the rewards.
PROMPT_FIELDS = {"prompt", "messages", "conversations", "instruction", "input", "system", "output", "history"}
_PLACEHOLDER = "__tunesmith_reply__"


def prompt_messages(record: Record, spec: DatasetSpec) -> list[Message]:
    """`prompt` (a string or messages), a conversation ending with the user's turn (a final assistant turn, e.g.
    a reference answer, is left out), or Alpaca `instruction` (+ `input`); validated as SFT records are."""
    data = rename_columns(record, spec.columns)
    if isinstance(data.get("prompt"), str):
        data = {"messages": [{"role": "user", "content": data["prompt"]}]}
    elif isinstance(data.get("prompt"), list):
        data = {"messages": data["prompt"]}
    # A placeholder reply completes a prompt-only record, so that the SFT formats check its turns.
    probe = Record({**data, _PLACEHOLDER: "-"}, record.file, record.line, record.unit)
    messages = normalize_record(probe, spec.model_copy(update={"columns": {}}), reply=_PLACEHOLDER)
    return messages[:-1]


def columns_of(data: dict) -> dict:
    return {k: v for k, v in data.items() if k not in PROMPT_FIELDS and isinstance(v, (str, int, float, bool))}


def build_prompt_data(data_cfg: DataConfig, template: ChatTemplate, tokenizer,
                      completion_tokens: int) -> tuple[datasets.Dataset, dict]:
    """The training prompts (mixed as SFT data is) as rows of `prompt` text and the records' other fields. TRL 1.16
    does not cut GRPO prompts, so a prompt that leaves fewer than `completion_tokens` of data.max_length is left out
    and counted (`dropped_long_prompt`); `longest_prompt` (tokens) bounds the sequences the run samples."""
    if data_cfg.validation or data_cfg.val_size:
        raise ConfigError("task: grpo has no validation pass yet", where="data.val_size",
                          hint="remove data.val_size / data.validation; measure with tunesmith eval afterwards")
    rng = random.Random(data_cfg.seed)
    pools = []
    for spec in data_cfg.train:
        records = read_records(spec.path, spec.split)[:spec.max_samples]
        if not records:
            raise DataError("no records", file=spec.path)
        pools.append([(prompt_messages(r, spec), columns_of(r.data), r) for r in records])
    items = mix(pools, mix_shares(data_cfg.train, pools), data_cfg.num_samples, rng)
    keys = sorted({key for _, columns, _ in items for key in columns})
    limit = data_cfg.max_length - completion_tokens
    rows = [{"prompt": template.render_prompt(messages), **{key: columns.get(key) for key in keys}}
            for messages, columns, _ in items]
    lengths = [len(tokenizer(row["prompt"])["input_ids"]) for row in rows]
    kept = [row for row, length in zip(rows, lengths) if length <= limit]
    if not kept:
        raise DataError(f"every prompt is longer than data.max_length - grpo.max_completion_length = {limit} tokens",
                        field="data.max_length", hint="raise data.max_length or lower grpo.max_completion_length")
    stats = {"train_samples": len(kept), "dropped_long_prompt": len(rows) - len(kept), "columns": keys,
             "longest_prompt": max(length for length in lengths if length <= limit),
             "datasets": [{"path": spec.path, "records": len(pool)} for spec, pool in zip(data_cfg.train, pools)]}
    return datasets.Dataset.from_list(kept), stats
