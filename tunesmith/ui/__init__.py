"""`tunesmith ui`: the whole workflow in a browser (docs/ui.md).

The tabs' handlers (`build`, `plan`, `runs`, `use`) are plain Python: they take and return plain values (text, dicts,
rows) and reuse the library (config validation, data preview and doctor, planner, curve doctor, inference, the API),
so tests call them without a browser. `app` assembles them into a Gradio page; `access` decides who may open it.
"""
