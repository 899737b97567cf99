"""tunesmith: turn a general pretrained language model into your own.

The Python API (`tunesmith/api.py`, docs/python.md) is importable from here: `tunesmith.train(...)`. It is loaded on
first use, so that `import tunesmith` (and `tunesmith --help`) stays instant.
"""

__version__ = "0.1.0"

API = ("load_config", "train", "load", "evaluate", "merge", "diagnose_merge", "export", "export_gguf", "plan", "check_data", "Model",
       "Evaluation", "evaluate_set", "SetEvaluation")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API:
        # By name: every layer imports `tunesmith` (for __version__), and a static import here would make each
        # depend on the API that sits above them.
        from importlib import import_module

        return getattr(import_module("tunesmith.api"), name)
    raise AttributeError(f"module 'tunesmith' has no attribute {name!r}")
