"""Training diagnostics: the curve doctor (pure functions over logged metrics), a TrainerCallback that applies
it during training, and the LoRA rank analysis of a finished run."""
