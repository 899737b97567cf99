"""The Gradio page: the four tabs wired to their handlers (build, plan, runs, use). Nothing here decides anything;
every handler is plain Python, tested without a browser (tests/test_ui.py) and through one (tests/test_ui_browser.py).
"""


import logging
import os
from pathlib import Path

from ..errors import TunesmithError
from . import build, plan, runs, use
from .access import password_check

CSS = """
.preview mark, .legend mark { background: #ffe08a; }
pre.preview { white-space: pre-wrap; }
"""
TRAIN_REFRESH_SECONDS = 2.0


def quiet_gradio() -> None:
    """No usage statistics sent home, no request log on the console (set before gradio is imported)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    for name in ("httpx", "gradio", "uvicorn", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _error(exc: TunesmithError) -> str:
    return f"error: {exc}"


def make_app(*, runs_root: str = "runs", config_path: str = "configs/ui.yaml"):
    """The gr.Blocks of the whole UI."""
    quiet_gradio()
    import gradio as gr
    import matplotlib.pyplot as plt

    start_yaml = build.form_yaml(build.FORM_DEFAULTS, "", config_path)
    with gr.Blocks(title="tunesmith", analytics_enabled=False, fill_width=True) as app:
        gr.Markdown("# tunesmith\nBuild a run, plan it, train it, use it. The YAML on the right is exactly what "
                    "`tunesmith train` reads.")
        with gr.Tab("Build", id="build"):
            with gr.Row():
                with gr.Column(scale=3):
                    form = _build_form(gr)
                with gr.Column(scale=2):
                    with gr.Row():
                        path = gr.Textbox(config_path, label="config file", elem_id="config-path", scale=3)
                        save_button = gr.Button("Save", elem_id="save", scale=1, min_width=60)
                        load_button = gr.Button("Load", elem_id="load", scale=1, min_width=60)
                    file_message = gr.Textbox(label="file", interactive=False, elem_id="file-message")
                    validation = gr.Textbox(build.validate(start_yaml, config_path)[1], label="validation",
                                            interactive=False, lines=2, max_lines=12, elem_id="validation")
                    yaml_box = gr.Code(start_yaml, language="yaml", label="config (YAML)", interactive=True,
                                       elem_id="yaml", lines=24)
            with gr.Accordion("Data: which tokens train, and the data doctor", open=False):
                with gr.Row():
                    preview_button = gr.Button("Preview samples", elem_id="preview-button")
                    doctor_button = gr.Button("Check the data (data doctor)", elem_id="doctor-button")
                preview = gr.HTML(elem_id="preview")
                doctor_summary = gr.Markdown(elem_id="doctor-summary")
                doctor_table = gr.Dataframe(headers=["file", "severity", "check", "where", "finding"],
                                            interactive=False, wrap=True, elem_id="doctor")
        with gr.Tab("Plan", id="plan"):
            with gr.Row():
                budget = gr.Number(0, label="memory budget in GiB (0: this machine's free memory)", minimum=0)
                device = gr.Dropdown(["auto", "cpu", "cuda"], value="auto", label="device")
                probe = gr.Checkbox(False, label="estimate the time (trains a few steps of a random copy)")
            plan_button = gr.Button("Plan the config", elem_id="plan-button")
            plan_out = gr.Markdown(elem_id="plan")
        with gr.Tab("Train", id="train"):
            with gr.Row():
                run_dir = gr.Textbox(label="run folder", elem_id="run-dir", scale=3)
                launch_button = gr.Button("Launch", variant="primary", elem_id="launch")
                resume_button = gr.Button("Resume", elem_id="resume")
                stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
            train_message = gr.Textbox(label="status", interactive=False, elem_id="train-message")
            progress_line = gr.Textbox(label="progress", interactive=False, elem_id="progress")
            with gr.Row():
                loss_plot = gr.Plot(label="loss", elem_id="loss-plot")
                with gr.Column():
                    findings = gr.Dataframe(headers=["severity", "step", "finding", "advice"], interactive=False,
                                            wrap=True, label="curve doctor", elem_id="findings")
                    console = gr.Code(label="console", language=None, interactive=False, elem_id="console",
                                      lines=10)
            runs_root_box = gr.Textbox(runs_root, label="runs folder (past runs are listed from here)",
                                       elem_id="runs-root")
            runs_table = gr.Dataframe(headers=["run", "status", "step", "last loss", "started"], interactive=False,
                                      label="runs (select one to show it)", elem_id="runs")
            shown_points = gr.State(-1)
            timer = gr.Timer(TRAIN_REFRESH_SECONDS)
        with gr.Tab("Use", id="use"):
            use_run = gr.Textbox(label="run folder", elem_id="use-run")
            with gr.Row():
                max_new = gr.Number(64, label="max new tokens", precision=0, minimum=1)
                temperature = gr.Number(0.0, label="temperature (0: greedy)", minimum=0)
            use_message = gr.Textbox(label="status", interactive=False, elem_id="use-message")
            with gr.Tab("Chat"):
                with gr.Row():
                    tuned_chat = gr.Chatbot(label="the run", elem_id="chat-tuned", height=320)
                    base_chat = gr.Chatbot(label="its base model", elem_id="chat-base", height=320)
                with gr.Row():
                    message = gr.Textbox(label="message", elem_id="chat-message", scale=4)
                    send = gr.Button("Send", variant="primary", elem_id="chat-send")
                    clear = gr.Button("Clear")
            with gr.Tab("Batch generation"):
                prompts = gr.Textbox(label="prompts file (.jsonl/.json/.txt)")
                answers = gr.Textbox(label="output JSONL")
                batch_button = gr.Button("Generate")
                batch_table = gr.Dataframe(headers=["prompt", "reply"], interactive=False, wrap=True)
            with gr.Tab("Evaluate"):
                suite = gr.Textbox(label="evaluation suite (YAML, docs/evaluation.md)")
                compare = gr.Checkbox(True, label="also the base model: a before/after report")
                eval_button = gr.Button("Evaluate")
                eval_out = gr.Markdown()
            with gr.Tab("Merge"):
                merge_config = gr.Textbox(label="merge config (YAML, docs/merging.md)")
                merge_suite = gr.Textbox(label="evaluation suite for the merge (optional)")
                merge_out = gr.Textbox(label="output folder (default: the config's `output:`)")
                merge_button = gr.Button("Merge")
                merge_result = gr.Markdown()
            with gr.Tab("Export"):
                export_out = gr.Textbox(label="output folder")
                export_merge = gr.Checkbox(True, label="merge the adapter into the base weights")
                export_gguf = gr.Dropdown(["", "f16", "q8_0", "q4_k_m", "f32", "q5_k_m", "q6_k"], value="",
                                          label="GGUF type (empty: a Hugging Face folder)")
                export_button = gr.Button("Export")
                export_result = gr.Markdown()

        # --- Build --------------------------------------------------------------------------------------------
        fields = [form[name] for name in build.FORM_FIELDS]

        def on_form(*values):
            *form_values, current, config = values
            try:
                return build.form_yaml(dict(zip(build.FORM_FIELDS, form_values)), current, config)
            except TunesmithError as exc:
                gr.Warning(_error(exc))
                return gr.update()

        for component in fields:
            component.input(on_form, [*fields, yaml_box, path], yaml_box)

        def on_yaml(text, config):
            cfg, note = build.validate(text, config)
            out = cfg.training.output_dir if cfg is not None else gr.update()
            return note, out, out

        yaml_box.change(on_yaml, [yaml_box, path], [validation, run_dir, use_run])
        path.change(on_yaml, [yaml_box, path], [validation, run_dir, use_run])
        save_button.click(build.save, [yaml_box, path], file_message)

        def on_load(config):
            text, values, note = build.load(config)
            return [note, text or gr.update(), *(values[name] for name in build.FORM_FIELDS)]

        load_button.click(on_load, path, [file_message, yaml_box, *fields])
        preview_button.click(build.preview_html, [yaml_box, path], preview)
        doctor_button.click(lambda text, config: build.doctor_rows(text, config)[::-1], [yaml_box, path],
                            [doctor_summary, doctor_table])

        # --- Plan ---------------------------------------------------------------------------------------------
        def on_plan(text, config, gib, where, timed):
            return plan.plan_markdown(text, config, device=None if where == "auto" else where,
                                      budget=int(gib * 2**30) if gib else None, probe=timed)

        plan_button.click(on_plan, [yaml_box, path, budget, device, probe], plan_out)

        # --- Train --------------------------------------------------------------------------------------------
        def on_launch(text, config, resume=False):
            saved = build.save(text, config)
            if saved.startswith("error"):
                return saved
            cfg, _ = build.validate(text, config)
            try:
                state = runs.launch(config, cfg.training.output_dir, resume=resume)
            except TunesmithError as exc:
                return _error(exc)
            what = "resumed" if resume else "launched"
            return f"{what} `{' '.join(['tunesmith', *state['command'][3:]])}` (pid {state['pid']})"

        launch_button.click(on_launch, [yaml_box, path], train_message)
        resume_button.click(lambda text, config: on_launch(text, config, True), [yaml_box, path], train_message)
        stop_button.click(lambda folder: runs.stop(folder) if folder else "no run folder", run_dir, train_message)

        def on_tick(folder, root, points):
            table = runs.run_rows(root)
            if not folder or not Path(folder).is_dir():
                return "", gr.update(), [], "", table, points
            current = runs.progress(folder)
            figure = gr.update()
            if current.points != points:
                figure = runs.loss_figure(current.records, Path(folder).name)
                if figure is not None:
                    plt.close(figure)  # rendered by Gradio from the object; pyplot need not keep it
            return (current.line(), figure, runs.curve_findings(current.records), runs.console_tail(folder), table,
                    current.points)

        tick_outputs = [progress_line, loss_plot, findings, console, runs_table, shown_points]
        timer.tick(on_tick, [run_dir, runs_root_box, shown_points], tick_outputs, show_progress="hidden")
        run_dir.change(lambda folder, root: on_tick(folder, root, -1), [run_dir, runs_root_box], tick_outputs,
                       show_progress="hidden")

        def on_select(table, event: gr.SelectData):
            row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
            folder = table.iloc[row, 0] if hasattr(table, "iloc") else table[row][0]
            return folder, folder

        runs_table.select(on_select, runs_table, [run_dir, use_run])

        # --- Use ----------------------------------------------------------------------------------------------
        def on_send(run, text, tuned, base, new_tokens, temp):
            result, error = use.guarded(use.chat, run, text, tuned, base, max_new_tokens=new_tokens or 64,
                                        temperature=temp or 0.0)
            if error:
                return tuned, base, error, text
            return result[0], result[1], "", ""

        chat_io = [use_run, message, tuned_chat, base_chat, max_new, temperature]
        send.click(on_send, chat_io, [tuned_chat, base_chat, use_message, message])
        message.submit(on_send, chat_io, [tuned_chat, base_chat, use_message, message])
        clear.click(lambda: ([], [], ""), None, [tuned_chat, base_chat, use_message])

        def on_batch(run, prompts_file, out, new_tokens, temp):
            result, error = use.guarded(use.batch_generate, run, prompts_file, out, max_new_tokens=new_tokens or 64,
                                        temperature=temp or 0.0)
            return (error, []) if error else result

        batch_button.click(on_batch, [use_run, prompts, answers, max_new, temperature], [use_message, batch_table])
        eval_button.click(lambda run, s, c: _text(use.guarded(use.evaluate, run, s, c)), [use_run, suite, compare],
                          eval_out)
        merge_button.click(lambda c, s, o: _text(use.guarded(use.merge, c, s, o)), [merge_config, merge_suite,
                                                                                       merge_out], merge_result)
        export_button.click(lambda run, o, m, g: _text(use.guarded(use.export, run, o, merge=m, gguf=g)),
                            [use_run, export_out, export_merge, export_gguf], export_result)
    return app


def _text(result) -> str:
    value, error = result
    return error or value


def _build_form(gr) -> dict:
    d = build.FORM_DEFAULTS
    form = {}
    with gr.Group():
        gr.Markdown("**Model**")
        with gr.Row():
            form["model"] = gr.Dropdown(build.model_choices(), value=d["model"], label="offline model",
                                        elem_id="model")
            form["model_path"] = gr.Textbox(d["model_path"], label="or a local folder / hub id",
                                            elem_id="model-path")
    with gr.Group():
        gr.Markdown("**Method**")
        with gr.Row():
            form["method"] = gr.Dropdown(build.method_choices(), value=d["method"], label="method",
                                         elem_id="method")
            form["r"] = gr.Number(d["r"], label="rank r", precision=0, elem_id="rank")
            form["alpha"] = gr.Number(d["alpha"], label="alpha", elem_id="alpha")
            form["dropout"] = gr.Number(d["dropout"], label="dropout", elem_id="dropout")
            form["target_modules"] = gr.Dropdown(["all-linear", "attention", "mlp"], value=d["target_modules"],
                                                 allow_custom_value=True, label="target modules")
        form["method_extra"] = gr.Textbox(d["method_extra"], label="further method options (YAML, e.g. "
                                          "`use_rslora: true`)", lines=1)
    with gr.Group():
        gr.Markdown("**Data**")
        form["data_files"] = gr.Textbox(d["data_files"], label="training files (one path a line)", lines=2,
                                        elem_id="data-files")
        with gr.Row():
            form["max_samples"] = gr.Number(d["max_samples"], label="max samples per file (0: all)", precision=0,
                                            elem_id="max-samples")
            form["template"] = gr.Dropdown(build.template_choices(), value=d["template"], label="template",
                                           elem_id="template")
            form["max_length"] = gr.Number(d["max_length"], label="max length (tokens)", precision=0,
                                           elem_id="max-length")
            form["val_size"] = gr.Number(d["val_size"], label="validation share or count")
    with gr.Group():
        gr.Markdown("**Training**")
        form["output_dir"] = gr.Textbox(d["output_dir"], label="output folder", elem_id="output-dir")
        with gr.Row():
            form["max_steps"] = gr.Number(d["max_steps"], label="max steps (0: by epochs)", precision=0,
                                          elem_id="max-steps")
            form["num_epochs"] = gr.Number(d["num_epochs"], label="epochs")
            form["learning_rate"] = gr.Number(d["learning_rate"], label="learning rate (0: derived)",
                                              elem_id="learning-rate")
            form["lr_scheduler"] = gr.Dropdown(["cosine", "linear", "constant"], value=d["lr_scheduler"],
                                               label="schedule")
        with gr.Row():
            form["batch_size"] = gr.Number(d["batch_size"], label="batch size", precision=0,
                                           elem_id="batch-size")
            form["grad_accum"] = gr.Number(d["grad_accum"], label="grad accum", precision=0)
            form["logging_steps"] = gr.Number(d["logging_steps"], label="log every (steps)", precision=0,
                                              elem_id="logging-steps")
            form["save_steps"] = gr.Number(d["save_steps"], label="checkpoint every (steps)", precision=0,
                                           elem_id="save-steps")
        with gr.Row():
            form["gradient_checkpointing"] = gr.Checkbox(d["gradient_checkpointing"],
                                                         label="gradient checkpointing")
            form["cpu_kernels"] = gr.Dropdown(["auto", "off"], value=d["cpu_kernels"],
                                              label="tunesmith's CPU kernels (off: torch's own, no compile step)",
                                              elem_id="cpu-kernels")
    return form


def serve(*, host: str = "127.0.0.1", port: int = 7860, token: str | None = None, runs_root: str = "runs",
          config_path: str = "configs/ui.yaml", block: bool = True):
    """Start the server; returns (the app, its local URL). `token`: required at login (any user name)."""
    app = make_app(runs_root=runs_root, config_path=config_path)
    app.queue(default_concurrency_limit=1)
    _, url, _ = app.launch(server_name=host, server_port=port, share=False, quiet=True, inbrowser=False,
                           auth=password_check(token) if token else None,
                           auth_message="user: any name; password: the access token" if token else None,
                           prevent_thread_lock=True, ssr_mode=False, enable_monitoring=False, mcp_server=False,
                           show_error=True, theme="default", css=CSS)
    if block:
        app.block_thread()
    return app, url
