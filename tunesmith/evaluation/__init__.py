"""Evaluation: metrics, the SUITE.yaml schema, before/after comparison reports and the forgetting rate."""
