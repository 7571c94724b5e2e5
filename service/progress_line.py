"""One progress line for the CLI: a bar redrawn in place on a terminal, plain lines in logs and pipes."""

from __future__ import annotations

from typing import TextIO

#: Characters in the bar between its brackets.
BAR_WIDTH = 24


class ProgressLine:
    """Draws ``[#####.....]  42%  text`` on ``stream``.

    On a terminal the line is redrawn in place; anywhere else (a log, a pipe) each :meth:`draw`
    writes a line of its own, and callers decide how often to draw. ``label`` prefixes every line.
    """

    def __init__(self, stream: TextIO, label: str = "") -> None:
        self.stream = stream
        self.label = label
        self.tty = stream.isatty()
        self._drawn = False

    def draw(self, text: str, fraction: float) -> None:
        """Show ``text`` with the bar at ``fraction`` (0..1)."""
        fraction = min(max(fraction, 0.0), 1.0)
        if self.tty:
            filled = int(BAR_WIDTH * fraction)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            self.stream.write(f"\r{self.label}[{bar}] {100 * fraction:3.0f}%  {text}\033[K")
            self._drawn = True
        else:
            self.stream.write(f"{self.label}{100 * fraction:3.0f}%  {text}\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line of its own; on a terminal it takes the bar's place and the next draw starts below."""
        if self._drawn:
            self.stream.write("\r\033[K")
            self._drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """End the bar's line, so that what follows starts on a fresh one."""
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False
        self.stream.flush()
