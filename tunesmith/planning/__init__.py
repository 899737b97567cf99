"""Plan a fine-tuning run before loading any weight: exact parameter counts, peak memory, time, advice."""

from .memory import MemoryPlan, PlanRequest, plan_memory
from .params import ParamCounts, exact_counts, load_model_config

__all__ = ["MemoryPlan", "ParamCounts", "PlanRequest", "exact_counts", "load_model_config", "plan_memory"]
