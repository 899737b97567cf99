"""Held-out preference accuracy: the share of pairs whose chosen reply the model gives a higher log-prob than the
rejected one (summed over the reply's tokens, after the run's template renders both)."""

from __future__ import annotations

import torch

from .model import sequence_logps


def preference_accuracy(model, tokenizer, rows: list[dict], *, max_length: int = 1024) -> dict:
    """`rows`: rendered pairs (`prompt`, `chosen`, `rejected`), as `data.preference.render` makes them."""
    wins, margins = 0, []
    model.eval()
    for row in rows:
        logps = [_reply_logp(model, tokenizer, row["prompt"], row[side], max_length) for side in ("chosen", "rejected")]
        wins += logps[0] > logps[1]
        margins.append(logps[0] - logps[1])
    return {"pairs": len(rows), "accuracy": wins / max(len(rows), 1),
            "mean_margin": sum(margins) / max(len(margins), 1)}


def _reply_logp(model, tokenizer, prompt: str, reply: str, max_length: int) -> float:
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + reply_ids)[:max_length]
    mask = ([0] * len(prompt_ids) + [1] * len(reply_ids))[:max_length]
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    return sequence_logps(model, input_ids, torch.ones_like(input_ids), torch.tensor([mask], device=device)).item()
