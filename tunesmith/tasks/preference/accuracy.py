"""Held-out preference accuracy: the share of pairs whose chosen reply the model scores above the rejected one.

A causal LM scores a reply by its log-prob given the prompt (after the run's template renders both), summed over
the reply's tokens, or with `normalize` averaged per token (a long reply's sum is lower just for its length);
a reward model by its score head on prompt + reply + EOS, the text TRL's RewardTrainer scores. A tie counts as a
loss (the model did not prefer the chosen reply).
"""

from __future__ import annotations

import torch

from .model import sequence_logps


def preference_accuracy(model, tokenizer, rows: list[dict], *, max_length: int = 1024,
                        normalize: bool = False, advance=None) -> dict:
    """`rows`: rendered pairs (`prompt`, `chosen`, `rejected`), as `data.preference.render` makes them. Returns
    pairs, accuracy, mean_margin (chosen minus rejected score) and `scores`: each pair's (chosen, rejected).
    `advance(1)` is called after each pair when given."""
    logps = reply_logps(model, tokenizer, rows, max_length=max_length, advance=advance)
    return _summary([tuple(total / max(count, 1) if normalize else total for total, count in pair) for pair in logps])


def reply_logps(model, tokenizer, rows: list[dict], *, max_length: int = 1024,
                advance=None) -> list[tuple[tuple[float, int], tuple[float, int]]]:
    """Each pair's ((chosen log-prob summed over its reply tokens, their count), (the same for rejected)): the
    summed and the per-token score both come from one pass, and, from two models' passes, the log-ratio that
    DPO's and KTO's implicit reward is."""
    model.eval()
    logps = []
    for row in rows:
        logps.append(tuple(_reply_logp(model, tokenizer, row["prompt"], row[side], max_length)
                           for side in ("chosen", "rejected")))
        if advance:
            advance(1)
    return logps


@torch.no_grad()
def reward_accuracy(model, tokenizer, rows: list[dict], *, max_length: int = 1024, advance=None) -> dict:
    """`preference_accuracy` for a reward model (a sequence classifier with one output): each side is scored on
    prompt + reply + EOS, tokenized as TRL's RewardTrainer does (the tokenizer's special tokens added), one at a
    time so that no padding decides which token the head reads; sequences are cut at `max_length`."""
    model.eval()
    device = next(model.parameters()).device
    eos = tokenizer.eos_token or ""

    def score(text: str) -> float:
        text = text if text.endswith(eos) else text + eos
        ids = tokenizer(text)["input_ids"][:max_length]
        return model(input_ids=torch.tensor([ids], device=device)).logits[0, 0].float().item()

    scores = []
    for row in rows:
        scores.append((score(row["prompt"] + row["chosen"]), score(row["prompt"] + row["rejected"])))
        if advance:
            advance(1)
    return _summary(scores)


def _summary(scores: list[tuple[float, float]]) -> dict:
    margins = [chosen - rejected for chosen, rejected in scores]
    return {"pairs": len(scores), "accuracy": sum(m > 0 for m in margins) / max(len(scores), 1),
            "mean_margin": sum(margins) / max(len(margins), 1), "scores": scores}


def _reply_logp(model, tokenizer, prompt: str, reply: str, max_length: int) -> tuple[float, int]:
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + reply_ids)[:max_length]
    mask = ([0] * len(prompt_ids) + [1] * len(reply_ids))[:max_length]
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    total = sequence_logps(model, input_ids, torch.ones_like(input_ids), torch.tensor([mask], device=device)).item()
    # sequence_logps scores tokens 1.. (each predicted from the one before): the reply tokens it counts
    return total, sum(mask[1:])
