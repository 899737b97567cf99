"""A run's spinners and progress bars on its console open one at a time. rich before 14.1 (tunesmith allows rich 13)
raises LiveError for a live display opened while another shows, so a nested one would end a run there; the suite
otherwise runs on a newer rich, which draws nested ones, and would not notice."""

from __future__ import annotations

from rich.console import Console

from tunesmith.cli.render import ConsoleReporter
from tunesmith.recipes import train

from .test_classification import cls_config
from .test_training import make_config


class OneLiveAtATime(Console):
    """Fails a test where rich 13 would fail the run. `set_live` / `clear_live` are what every rich Live (status,
    progress) calls on its console as it starts and stops."""

    def __init__(self):
        super().__init__(record=True, width=200)
        self.showing: list = []
        self.opened = 0

    def set_live(self, live):
        what = str(getattr(live.renderable, "text", live.renderable))  # a status's spinner holds its text
        assert not self.showing, f"{what!r} opened inside {self.showing[-1]!r}"
        self.showing.append(what)
        self.opened += 1
        return super().set_live(live)

    def clear_live(self):
        self.showing.pop()
        super().clear_live()


def test_a_causal_lm_run_opens_one_live_display_at_a_time(stories_dir, tmp_path):
    console = OneLiveAtATime()
    train(make_config(stories_dir, tmp_path / "run", max_steps=2), reporter=ConsoleReporter(console))
    assert console.opened >= 3 and not console.showing  # data, pre-flight, model, CPU layers...


def test_a_classification_run_opens_one_live_display_at_a_time(tiny_model_factory, tmp_path):
    console = OneLiveAtATime()
    train(cls_config(tiny_model_factory("llama"), tmp_path, max_steps=2), reporter=ConsoleReporter(console))
    assert console.opened >= 2 and not console.showing
