"""The data doctor: schema, statistics, diversity, accuracy, consistency, duplicates and contamination checks
for instruction data (Chinese and English), with console, JSON and HTML reports and a CI gate."""

from .base import Finding, Sample, Section
from .gate import evaluate as evaluate_gate
from .run import CheckOptions, Report, run_check
from .schema import load_samples

__all__ = ["CheckOptions", "Finding", "Report", "Sample", "Section", "evaluate_gate", "load_samples", "run_check"]
