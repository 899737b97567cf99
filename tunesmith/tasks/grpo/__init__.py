"""GRPO (`task: grpo`): prompts, reward functions and how TRL's GRPOTrainer calls them (`recipes/grpo.py`)."""
