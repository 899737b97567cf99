"""Metric families, one module each: perplexity, generation, instruction-following checks, classification, judge."""
