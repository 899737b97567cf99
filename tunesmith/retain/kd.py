"""Distillation from the starting model: α·T²·KL(teacher ‖ student) of the next-token distributions at temperature
T (Hinton et al., 2015), over the trained positions of replay and/or task samples.

With adapters the teacher is the same model with its adapters disabled, run under no_grad (no second copy in
memory); otherwise (full tuning, or a method that moves the base at the start) a frozen copy of the starting model.
No tokens × vocabulary logits are kept: the teacher's head input is taken as it enters the head (`HeadInput`), and
the KL runs over chunks of rows, each under activation checkpointing, so one chunk's logits exist at a time, in
backward as in forward (backward recomputes them).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..speed.chunked_loss import chunk_tokens
from ..speed.logits import HeadInput, HeadRows, plain_head


class Teacher:
    """The starting model's next-token scores for a batch; see the module docstring."""

    def __init__(self, model, *, adapters_off_is_start: bool, compute_dtype: torch.dtype | None = None):
        # The student runs under the Trainer's autocast (accelerate wraps its forward); a copy must run as it does.
        self.autocast = compute_dtype if compute_dtype not in (None, torch.float32) else None
        self.copy = None
        if not (hasattr(model, "disable_adapter") and adapters_off_is_start):
            self.copy = copy.deepcopy(model).eval().requires_grad_(False)

    @contextmanager
    def _model(self, model):
        if self.copy is None:
            with model.disable_adapter():
                yield model
            return
        device = next(model.parameters()).device
        if next(self.copy.parameters()).device != device:  # the Trainer moved the student after the copy was made
            self.copy.to(device)
        with torch.autocast(device.type, dtype=self.autocast, enabled=self.autocast is not None):
            yield self.copy

    @torch.no_grad()
    def rows(self, model, inputs: dict) -> HeadRows:
        """The teacher's HeadRows for `inputs`, the batch exactly as the student's forward got it."""
        with self._model(model) as teacher:
            head = plain_head(teacher)
            with HeadInput(head) if head is not None else nullcontext() as taken:
                outputs = teacher(**inputs)
        if head is not None:
            return HeadRows(hidden=taken.hidden, head=head)
        return HeadRows(logits=outputs.logits)

    def nbytes(self) -> int:
        return 0 if self.copy is None else sum(p.numel() * p.element_size() for p in self.copy.parameters())


def select(rows: HeadRows, which: torch.Tensor) -> HeadRows:
    """Only the rows where `which` (rows,) is True."""
    if rows.logits is not None:
        return HeadRows(logits=rows.logits[which])
    return HeadRows(hidden=rows.hidden[which], head=rows.head)


def _kl_sum(student_rows, teacher_rows, student: HeadRows, teacher: HeadRows, temperature: float):
    log_s = F.log_softmax(student.logits_of(student_rows) / temperature, dim=-1)
    log_t = F.log_softmax(teacher.logits_of(teacher_rows) / temperature, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum()


def kd_sum(student: HeadRows, teacher: HeadRows, temperature: float, chunk: int | None = None) -> torch.Tensor:
    """Σ over rows of KL(softmax(t/T) ‖ softmax(s/T)) (without α·T²), chunk by chunk."""
    s_rows, t_rows = student.raw, teacher.raw.detach()
    vocab = student.logits.shape[-1] if student.logits is not None else student.head.weight.shape[0]
    chunk = chunk or chunk_tokens(vocab, s_rows.device.type)
    total = s_rows.new_zeros((), dtype=torch.float32)
    for start in range(0, s_rows.shape[0], chunk):
        stop = start + chunk
        total = total + checkpoint(_kl_sum, s_rows[start:stop], t_rows[start:stop], student, teacher, temperature,
                                   use_reentrant=False)
    return total
