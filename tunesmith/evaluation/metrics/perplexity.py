"""Token-level loss and perplexity of a causal LM on plain text or on instruction data (response tokens only)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from ...data.encoding import IGNORE_INDEX, encode_conversation, needs_special_tokens
from ...data.formats import Message
from ...data.templates.base import ChatTemplate

Example = tuple[list[int], list[int]]  # input ids, labels (IGNORE_INDEX where not scored)


def text_examples(tokenizer, texts: Iterable[str], max_length: int, max_windows: int | None = None
                  ) -> list[Example]:
    """Every token of each text is scored; a text longer than `max_length` is cut into consecutive windows
    (each window is scored without the previous one as context, the usual simple approximation), at most
    `max_windows` per text (a whole Wikipedia article is hundreds of windows)."""
    examples = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=needs_special_tokens(tokenizer, text))["input_ids"]
        if max_windows:
            ids = ids[:max_windows * max_length]
        for start in range(0, len(ids), max_length):
            window = ids[start:start + max_length]
            if len(window) > 1:  # the first token of a window has no prediction
                examples.append((window, list(window)))
    return examples


def conversation_examples(tokenizer, template: ChatTemplate, conversations: Iterable[list[Message]],
                          max_length: int) -> list[Example]:
    """Only the assistant's tokens are scored, with the same masking (and truncation) as training."""
    examples = []
    for messages in conversations:
        encoded = encode_conversation(tokenizer, template, messages, max_length)
        if encoded is not None:
            examples.append((encoded["input_ids"], encoded["labels"]))
    return examples


@torch.inference_mode()
def score_examples(model, examples: Sequence[Example], *, pad_id: int = 0, batch_size: int = 8,
                   on_batch: Callable[[int], None] | None = None) -> dict:
    """{loss: mean negative log-likelihood per scored token (nats), perplexity: exp(loss), tokens, samples}.

    The mean is over tokens of all examples together (not a mean of per-example means), as in training.
    """
    total_nll, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))  # similar lengths pad less
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start:start + batch_size]]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (ids, labs) in enumerate(chunk):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            labels[row, :len(labs)] = torch.tensor(labs)
            attention[row, :len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
        shifted = labels[:, 1:].to(device)
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), shifted.reshape(-1),
                              ignore_index=IGNORE_INDEX, reduction="sum")
        total_nll += nll.item()
        total_tokens += int((shifted != IGNORE_INDEX).sum())
        if on_batch:
            on_batch(len(chunk))
    loss = total_nll / total_tokens if total_tokens else float("nan")
    return {"loss": loss, "perplexity": math.exp(loss) if total_tokens else float("nan"),
            "tokens": total_tokens, "samples": len(examples)}
