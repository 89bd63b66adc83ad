"""How `realize` shows sizes, times, tables and the progress of a long job to a person."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any


def human(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def when(seconds: float | None) -> str:
    """A unix time as local date and time; "never" for none."""
    if not seconds:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def table(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """`rows` (the first the header) as lines of left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        (indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))).rstrip()
        for row in rows
    ]


class ProgressBar:
    """One line redrawn on a terminal; on anything else a line per tenth of the way."""

    def __init__(self, label: str, stream: Any = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.shown = -1

    def update(self, files: int, files_total: int, done: int, total: int) -> None:
        fraction = done / total if total else (files / files_total if files_total else 1.0)
        fraction = min(fraction, 1.0)
        text = (
            f"{self.label} {fraction * 100:5.1f}%  {files}/{files_total} files  "
            f"{human(done)} of {human(total)}"
        )
        if self.tty:
            width = 30
            filled = int(fraction * width)
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r[{bar}] {text}\x1b[K")
            self.stream.flush()
        elif int(fraction * 10) > self.shown:
            self.shown = int(fraction * 10)
            print(text, file=self.stream, flush=True)

    def end(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
