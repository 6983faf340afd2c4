"""Progress for a terminal and for a log: one helper behind every progress bar.

On a terminal `progress_bar` is a tqdm bar, redrawn in place. Anywhere else (stderr redirected to a
file or a pipe, `make demo > log 2>&1`) it prints plain lines, no carriage returns: one when it starts,
one when at least `LOG_EVERY_S` seconds have passed at a finished item (a training step, a task, a
checkpoint), and one at the end, so a log grows by a line every few seconds, not by a redraw per step.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm.auto import tqdm

LOG_EVERY_S = 5.0  # seconds between progress lines when the output is not a terminal


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, disable: bool = False, file: TextIO | None = None,
                 every_s: float = LOG_EVERY_S) -> Any:
    """A tqdm bar on a terminal, else a `LineProgress`; both have update, set_postfix, close and iterate."""
    file = file or sys.stderr
    if disable or is_terminal(file):
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, file=file,
                    dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, file=file, every_s=every_s)


def is_terminal(file: TextIO) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


class LineProgress:
    """Progress as plain lines, no carriage returns: `desc: n/total unit (pct%), elapsed, time left, postfix`."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, file: TextIO, every_s: float = LOG_EVERY_S):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit, self.file, self.every_s = total, desc, unit, file, every_s
        self.n = self.start_n = initial
        self.postfix = ""
        self.start = time.monotonic()
        self.last_line = self.start
        self.closed = False
        self.line()

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last_line >= self.every_s:
            self.line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.line()

    def line(self) -> None:
        now = time.monotonic()
        self.last_line = now
        elapsed = now - self.start
        done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        parts = [f"{done} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{tqdm.format_interval(elapsed)} elapsed")
        rate_n = self.n - self.start_n
        if self.total is not None and 0 < rate_n and self.n < self.total:
            parts.append(f"~{tqdm.format_interval(elapsed / rate_n * (self.total - self.n))} left")
        if self.postfix:
            parts.append(self.postfix)
        self.file.write(f"{self.desc + ': ' if self.desc else ''}{', '.join(parts)}\n")
        self.file.flush()
