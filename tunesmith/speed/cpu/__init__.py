"""CPU-only speed pieces: compiled kernels (`native.py` builds them: causal attention, dropout), the RMSNorm
backward, grouped-query SDPA, the layers swapped into a model (`layers.py`) and the allocator (`allocator.py`)."""
