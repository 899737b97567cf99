"""LLM-as-judge: another model grades each reply through an OpenAI-compatible chat endpoint, or, comparing two
models on the same prompts, says which of their two replies is better (a win rate, as AlpacaEval and MT-Bench's
pairwise mode report it).

The HTTP client (retries, rate limit, concurrency, API key from the environment) is the data-construction
teacher's; this module only writes the grading prompt and reads the score back.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_RUBRIC = ("Judge how well the answer follows the instruction: correctness, helpfulness, and whether it "
                  "does what was asked. Use the reference answer, when given, as a guide to a good answer.")
PROMPT = """You are grading an AI assistant's answer.

{rubric}

[Instruction]
{question}

[Reference answer]
{reference}

[Assistant's answer]
{answer}

Reply with a short justification, then a final line exactly of the form "Score: N" where N is an integer from 1 to {max_score}."""
PAIRWISE_PROMPT = """You are comparing two AI assistants' answers to the same instruction.

{rubric}

[Instruction]
{question}

[Reference answer]
{reference}

[Answer A]
{first}

[Answer B]
{second}

Reply with a short justification, then a final line exactly of the form "Winner: A", "Winner: B" or "Winner: tie"."""
_WINNER = re.compile(r"winner\s*[:：=]\s*\**\s*(a|b|tie)\b", re.IGNORECASE)
_SCORE = re.compile(r"score\s*[:：=]\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_FRACTION = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*(\d+)")


@dataclass
class JudgeSettings:
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    rubric: str = DEFAULT_RUBRIC
    max_score: int = 10
    concurrency: int = 4
    max_tokens: int = 256


def parse_score(text: str, max_score: int) -> float | None:
    """The last "Score: N" in the reply (else the last "N/max"), if it lies in [1, max_score]; None otherwise."""
    found = _SCORE.findall(text)
    value = float(found[-1]) if found else None
    if value is None:
        fractions = [(float(a), int(b)) for a, b in _FRACTION.findall(text) if int(b) == max_score]
        value = fractions[-1][0] if fractions else None
    return value if value is not None and 1 <= value <= max_score else None


def parse_winner(text: str) -> str | None:
    """"A", "B" or "tie" from the judge's last "Winner: ..." line; None when there is none."""
    found = _WINNER.findall(text)
    return found[-1].upper() if found and found[-1].lower() != "tie" else ("tie" if found else None)


def _teacher(settings: JudgeSettings):
    import os

    from ...data.construct.teachers import OpenAITeacher

    api_key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
    return OpenAITeacher(settings.model, base_url=settings.base_url, api_key=api_key,
                         concurrency=settings.concurrency)


def judge_replies(settings: JudgeSettings, questions: Sequence[str], references: Sequence[str | None],
                  answers: Sequence[str]) -> dict:
    """{judge_score: mean score scaled to [0, 1] as (N-1)/(max-1), judge_mean: mean raw N, judge_unparsed,
    scores: per reply (None when the judge's reply had no readable score), raw: the judge's replies}."""
    from ...data.construct.teachers import TeacherOptions

    teacher = _teacher(settings)
    prompts = [[{"role": "user", "content": PROMPT.format(rubric=settings.rubric, question=q,
                                                          reference=r or "(none)", answer=a,
                                                          max_score=settings.max_score)}]
               for q, r, a in zip(questions, references, answers)]
    raw = teacher.complete(prompts, TeacherOptions(max_tokens=settings.max_tokens, temperature=0.0))
    scores = [parse_score(text, settings.max_score) for text in raw]
    valid = [s for s in scores if s is not None]
    mean = sum(valid) / len(valid) if valid else float("nan")
    return {"judge_score": (mean - 1) / (settings.max_score - 1) if valid else float("nan"),
            "judge_mean": mean, "judge_unparsed": (len(scores) - len(valid)) / max(len(scores), 1),
            "scores": scores, "raw": raw}


def judge_head_to_head(settings: JudgeSettings, questions: Sequence[str], references: Sequence[str | None],
                       tuned: Sequence[str], base: Sequence[str]) -> dict:
    """The judge sees each prompt's two replies twice, once in each order, because judges favour a position (Zheng
    et al. 2023, MT-Bench). A verdict scores the tuned reply 1 (better), 0.5 (tie) or 0; a sample's score is the
    mean of its readable verdicts. {win_rate: mean sample score, wins / ties / losses: samples above, at, below
    0.5, unparsed: samples without a readable verdict, consistency: share of samples whose two verdicts agree,
    scores: per sample (None: unparsed), raw: the judge's replies per sample, tuned first then base first}."""
    from ...data.construct.teachers import TeacherOptions

    rubric = settings.rubric
    prompts = []
    for q, r, t, b in zip(questions, references, tuned, base):
        for first, second in ((t, b), (b, t)):
            prompts.append([{"role": "user", "content": PAIRWISE_PROMPT.format(
                rubric=rubric, question=q, reference=r or "(none)", first=first, second=second)}])
    raw = _teacher(settings).complete(prompts, TeacherOptions(max_tokens=settings.max_tokens, temperature=0.0))
    scores, agree, pairs = [], [], []
    for i in range(0, len(raw), 2):
        tuned_first, base_first = parse_winner(raw[i]), parse_winner(raw[i + 1])
        verdicts = [v for v in ({"A": 1.0, "B": 0.0, "tie": 0.5}.get(tuned_first),
                                {"A": 0.0, "B": 1.0, "tie": 0.5}.get(base_first)) if v is not None]
        scores.append(sum(verdicts) / len(verdicts) if verdicts else None)
        if len(verdicts) == 2:
            agree.append(verdicts[0] == verdicts[1])
        pairs.append([raw[i], raw[i + 1]])
    valid = [s for s in scores if s is not None]
    return {"win_rate": sum(valid) / len(valid) if valid else float("nan"),
            "wins": sum(s > 0.5 for s in valid), "ties": sum(s == 0.5 for s in valid),
            "losses": sum(s < 0.5 for s in valid), "unparsed": len(scores) - len(valid),
            "consistency": sum(agree) / len(agree) if agree else float("nan"), "scores": scores, "raw": pairs}
