"""Self-Instruct: grow an instruction dataset from a few seed tasks with a teacher model.

Each round asks the teacher (in batches) for new tasks, showing a few seed tasks and a few tasks generated so far
as a numbered list that the teacher continues; the new instructions are filtered (length, format, tasks a text
model cannot do, language, ROUGE-L >= `max_rouge` against every instruction in the pool), then the teacher
answers each one and the answers are filtered with the data doctor's accuracy rules. Accepted samples are appended
to the output JSONL at once, each with its provenance, so an interrupted run resumes where it stopped.
Instances get no separate `input` (the original paper's input/output split is left out).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import DataError
from ..doctor.accuracy import reply_problems
from ..doctor.text import language, rouge_l, units
from ..readers import read_records
from .output import JsonlAppender, provenance
from .teachers import Teacher, TeacherOptions

UNSUITABLE = re.compile(r"\b(image|images|picture|photo|graph|chart|diagram|video|audio|map|draw|plot|file|"
                        r"attached|url|link|go to)\b|图片|图像|照片|视频|音频|画一|绘制|附件|链接|文件", re.I)
_NUMBERING = re.compile(r"^\s*(task\s*\d+\s*[:：.]|任务\s*\d+\s*[:：.]|\d+\s*[.、)）:：]|[-*•])\s*", re.I)

PROMPTS = {
    "en": ("Come up with new, diverse tasks for an AI assistant. Vary the task type (questions, writing, "
           "classification, rewriting, coding, analysis). Write one task per line.\n\n{tasks}"),
    "zh": ("请为AI助手想出新的、多样化的任务。任务类型要多样（问答、写作、分类、改写、编程、分析等）。每行写一个任务。\n\n{tasks}"),
}
TASK_WORD = {"en": "Task", "zh": "任务"}


@dataclass
class SelfInstructConfig:
    num: int = 100  # samples wanted in the output (those already there count)
    batch_size: int = 4  # task-generation prompts per round
    seed_examples: int = 3
    generated_examples: int = 2
    max_rouge: float = 0.7
    min_units: int = 3
    max_units: int = 150
    language: str | None = None  # "zh" / "en": keep only instructions in this language
    max_rounds: int | None = None  # stop after this many rounds (default: 10 per batch of wanted samples)
    seed: int = 0
    instruction_options: TeacherOptions = field(default_factory=lambda: TeacherOptions(max_tokens=256,
                                                                                      temperature=1.0))
    answer_options: TeacherOptions = field(default_factory=lambda: TeacherOptions(max_tokens=512,
                                                                                 temperature=0.7))


@dataclass
class SelfInstructResult:
    written: int
    total: int
    rounds: int
    rejected: Counter


def read_seed_tasks(path: str) -> list[dict]:
    """Seeds as {instruction, input, output}; .txt files hold one instruction a line."""
    if Path(path).suffix.lower() == ".txt":
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        seeds = [{"instruction": line.strip(), "input": "", "output": ""} for line in lines if line.strip()]
    else:
        seeds = []
        for record in read_records(path):
            data = record.data
            text = data.get("instruction") or data.get("prompt") or data.get("task")
            if not isinstance(text, str) or not text.strip():
                raise record.error("a seed task needs an 'instruction' (or 'prompt') string", field="instruction")
            seeds.append({"instruction": text.strip(), "input": data.get("input") or "",
                          "output": data.get("output") or ""})
    if not seeds:
        raise DataError("no seed tasks", file=path)
    return seeds


def parse_tasks(text: str) -> list[str]:
    """The teacher's continuation of a numbered list → task strings (numbering and bullets removed)."""
    tasks = []
    for line in text.splitlines():
        line = _NUMBERING.sub("", line).strip().strip('"“”')
        if line:
            tasks.append(line)
    return tasks


def instruction_problem(text: str, pool_units: list[list[str]], cfg: SelfInstructConfig) -> tuple[str, float]:
    """(reason to reject or "", best ROUGE-L against the pool)."""
    own = units(text)
    if not (cfg.min_units <= len(own) <= cfg.max_units):
        return "length", 0.0
    if not re.match(r"[\w\u4e00-\u9fff\"“'(（]", text):
        return "format", 0.0
    if UNSUITABLE.search(text):
        return "unsuitable", 0.0
    if cfg.language and language(text) != cfg.language:
        return "language", 0.0
    best = max((rouge_l(own, other) for other in pool_units), default=0.0)
    if best >= cfg.max_rouge:
        return "similar", best
    return "", best


def self_instruct(teacher: Teacher, seeds: list[dict], out: str, cfg: SelfInstructConfig,
                  progress=None) -> SelfInstructResult:
    """Generate until `cfg.num` samples are in `out`. `progress(done, total)` is called after each round."""
    rng = random.Random(cfg.seed)
    lang = cfg.language or _majority_language(seeds)
    rejected: Counter = Counter()
    with JsonlAppender(out) as sink:
        pool = [s["instruction"] for s in seeds] + [r.get("instruction", "") for r in sink.existing]
        pool_units = [units(text) for text in pool]
        generated = [r.get("instruction", "") for r in sink.existing]
        done, written, rounds = len(sink.existing), 0, 0
        max_rounds = cfg.max_rounds or 10 * (-(-cfg.num // cfg.batch_size) + 1)
        while done < cfg.num and rounds < max_rounds:
            rounds += 1
            prompts, shown = [], []
            for _ in range(cfg.batch_size):
                examples = rng.sample(seeds, min(cfg.seed_examples, len(seeds)))
                extra = rng.sample(generated, min(cfg.generated_examples, len(generated)))
                tasks = [s["instruction"] for s in examples] + extra
                shown.append([seeds.index(s) for s in examples])
                listing = "\n".join(f"{TASK_WORD[lang]} {i}: {t}" for i, t in enumerate(tasks, start=1))
                listing += f"\n{TASK_WORD[lang]} {len(tasks) + 1}:"
                prompts.append([{"role": "user", "content": PROMPTS[lang].format(tasks=listing)}])
            candidates = []
            for reply, seed_ids in zip(teacher.complete(prompts, cfg.instruction_options), shown):
                for text in parse_tasks(reply):
                    reason, score = instruction_problem(text, pool_units, cfg)
                    if reason:
                        rejected[f"instruction:{reason}"] += 1
                        continue
                    candidates.append((text, seed_ids, score))
                    pool.append(text)
                    pool_units.append(units(text))
            candidates = candidates[:cfg.num - done]
            if not candidates:
                if progress:
                    progress(done, cfg.num)
                continue
            answers = teacher.complete([[{"role": "user", "content": c[0]}] for c in candidates],
                                       cfg.answer_options)
            accepted = []
            for (text, seed_ids, score), answer in zip(candidates, answers):
                problems = [p for p in reply_problems(text, answer.strip()) if p[0] != "language_mismatch"
                            or cfg.language]
                if problems:
                    rejected[f"answer:{problems[0][0]}"] += 1
                    continue
                generated.append(text)
                accepted.append({"instruction": text, "input": "", "output": answer.strip(),
                                 "provenance": provenance("self-instruct", teacher.name, round=rounds,
                                                          seed_tasks=seed_ids, rouge_l_max=round(score, 3))})
            sink.write(accepted)
            done += len(accepted)
            written += len(accepted)
            if progress:
                progress(done, cfg.num)
    return SelfInstructResult(written, done, rounds, rejected)


def _majority_language(seeds: list[dict]) -> str:
    votes = Counter(language(s["instruction"]) for s in seeds)
    return "zh" if votes["zh"] > votes["en"] else "en"
