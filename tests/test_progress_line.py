"""The CLI's progress line: redrawn in place on a terminal, whole lines in logs and pipes."""

from __future__ import annotations

import io

from service.operator_commands import JobProgressBar
from service.progress_line import BAR_WIDTH, ProgressLine


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_is_redrawn_in_place_and_notes_take_its_line() -> None:
    out = Terminal()
    line = ProgressLine(out, label="  ")
    line.draw("epoch 1", 0.5)
    line.draw("epoch 2", 1.5)  # clamped
    line.note("validated")
    line.draw("epoch 3", 0.25)
    line.finish()
    text = out.getvalue()
    half = "#" * (BAR_WIDTH // 2) + "." * (BAR_WIDTH // 2)
    assert text.startswith(f"\r  [{half}]  50%  epoch 1\033[K")
    assert f"\r  [{'#' * BAR_WIDTH}] 100%  epoch 2\033[K" in text
    # The note clears the bar, stands on its own line, and the bar starts again below it.
    assert "\r\033[Kvalidated\n\r  [" in text
    assert text.endswith("epoch 3\033[K\n") and text.count("\n") == 2


def test_in_a_log_every_draw_is_a_plain_line() -> None:
    out = io.StringIO()
    line = ProgressLine(out)
    line.draw("epoch 1", 0.5)
    line.note("validated")
    line.finish()
    assert out.getvalue() == " 50%  epoch 1\nvalidated\n"


def test_a_job_bar_in_a_log_writes_a_line_per_state_and_epoch_not_per_poll() -> None:
    out = io.StringIO()
    bar = JobProgressBar(out)
    running = {"id": 7, "block": "fc", "state": "running"}
    train = {"phase": "train", "epoch": 1, "epochs": 2, "batch": 1, "batches": 4, "loss": 0.5}
    bar.update({**running, "progress": train})
    bar.update({**running, "progress": {**train, "batch": 2}})  # the same epoch: no line
    bar.update({**running, "progress": {**train, "phase": "validate", "batch": 4, "val_loss": 0.4}})
    bar.update({"id": 7, "block": "fc", "state": "succeeded", "progress": {}})
    bar.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[-1].endswith("job 7 fc succeeded") and lines[-1].startswith("100%")
