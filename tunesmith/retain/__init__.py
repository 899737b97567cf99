"""Training options that protect what the starting model could do (`retain:` in a run config; docs/forgetting.md).

- `replay.py`: old-ability data mixed into the training stream at a ratio, plain text with the LM loss;
- `l2sp.py`: λ·Σ‖θ − θ₀‖² (LoRA: the update's norm from r×r products);
- `ewc.py`: λ/2·Σ F·(θ − θ₀)² with the starting model's empirical Fisher, cached beside the run;
- `kd.py`: α·T²·KL(teacher ‖ student), the teacher being the starting model (adapters off, or a frozen copy);
- `terms.py`: the three penalties as the Trainer's `loss_terms` hook; `setup.py`: their preparation for a run;
- `memory.py`: what they add to a run's memory, for the planner.
"""
