"""What the retain options add to a run's memory, for the planner: counted on the planner's prepared meta model,
which has the same trained tensors and LoRA layers as training's."""

from __future__ import annotations

from .anchors import lora_base_weight, lora_layers

FP32 = 4  # the Fisher is kept in fp32


def _nbytes(tensors) -> float:
    return float(sum(t.numel() * t.element_size() for t in tensors))


def teacher_is_copy(model, method) -> bool:
    """Whether retain.kd's teacher is a frozen copy of the model (no adapters to switch off)."""
    return not (hasattr(model, "disable_adapter") and method.adapters_off_is_start)


def retain_weights(model, method, *, l2sp: bool, ewc: bool, kd: bool) -> dict[str, float]:
    """Bytes held through training, by part: θ₀ of the trained tensors (full, freeze, IA3; none for LoRA, whose θ₀
    is the base itself), the Fisher (fp32, one per trained tensor or per adapted base weight), KD's teacher copy
    (which also serves as θ₀)."""
    parts = {}
    copy = kd and teacher_is_copy(model, method)
    trained = [p for p in model.parameters() if p.requires_grad]
    if copy:
        parts["retain: teacher (frozen copy)"] = _nbytes(model.parameters())
    elif method.retain_distance == "trainable" and (l2sp or ewc):
        parts["retain: θ₀ of the trained tensors"] = _nbytes(trained)
    if ewc:
        targets = [lora_base_weight(layer) for _, layer in lora_layers(model)] \
            if method.retain_distance == "low_rank" else trained
        parts["retain: EWC Fisher (fp32)"] = float(sum(t.numel() for t in targets) * FP32)
    return parts


def teacher_pass(per_block: float, block_input: float, chunk_rows: int, vocab: int) -> float:
    """KD's no_grad teacher forward beside the student's saved activations: one block's working set and its output,
    the teacher's head input, and one chunk of the KL's fp32 logits (student's and teacher's, each with its
    log-softmax)."""
    return per_block + 2 * block_input + chunk_rows * vocab * FP32 * 4
