"""LLM-as-judge: another model grades each reply through an OpenAI-compatible chat endpoint.

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


def judge_replies(settings: JudgeSettings, questions: Sequence[str], references: Sequence[str | None],
                  answers: Sequence[str]) -> dict:
    """{judge_score: mean score scaled to [0, 1] as (N-1)/(max-1), judge_mean: mean raw N, judge_unparsed,
    scores: per reply (None when the judge's reply had no readable score), raw: the judge's replies}."""
    import os

    from ...data.construct.teachers import OpenAITeacher, TeacherOptions

    api_key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
    teacher = OpenAITeacher(settings.model, base_url=settings.base_url, api_key=api_key,
                            concurrency=settings.concurrency)
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
