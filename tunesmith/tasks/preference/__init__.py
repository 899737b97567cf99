"""Preference tuning (`task: dpo | orpo | simpo | kto | reward`): what the recipes `recipes/dpo.py`, `recipes/kto.py`
and `recipes/reward.py` share. TRL's trainers compute the losses; tunesmith owns the data (`data/preference.py`),
the model with its method, where a run starts from (an earlier SFT run), the reference model and the metrics."""
