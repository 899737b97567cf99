"""How fast and lean a run trains, without changing what it learns.

`plan.py` resolves a run's `speed:` section once into a `SpeedPlan`; `apply.py` applies it to the process and the
model. The pieces: the chunked loss (`chunked_loss.py`), padding-free attention masks (`padding_mask.py`), the
frozen base held in the autocast dtype (`frozen_base.py`), and in `cpu/` tunesmith's CPU kernels and the allocator.
docs/speed.md says what each does and what measured it.
"""
