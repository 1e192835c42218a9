"""Text for a terminal: aligned tables, a progress line, and quiet for code that prints. A leaf module
(standard library only)."""
import contextlib
import os
import sys
import time


def table_lines(rows, right_from=None):
    """Rows of strings as aligned lines (two spaces between columns, no trailing blanks); columns
    from index ``right_from`` on are right-aligned (numbers), the others left-aligned."""
    rows = [tuple(row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    right_from = len(widths) if right_from is None else right_from
    return ["  ".join(cell.rjust(w) if i >= right_from else cell.ljust(w)
                      for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]


class Progress(object):
    """One stderr line: ``label  done/total  pct  rate/s  ETA``. Redrawn in place on a terminal (at
    most 10 times a second), a plain line every few seconds otherwise."""

    def __init__(self, total, label, unit="frames", stream=None, enabled=True):
        self.total = max(int(total), 0)
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.done = 0
        self.started = time.monotonic()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._drawn = 0.0 if self._tty else self.started  # in a log, the first line after 5 s, not at once

    @property
    def rate(self):
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def update(self, count):
        self.done += count
        now = time.monotonic()
        if self.enabled and now - self._drawn >= (0.1 if self._tty else 5.0):
            self._drawn = now
            self._draw("\r" if self._tty else "", "" if self._tty else "\n")

    def _draw(self, start, end):
        rate = self.rate
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        self.stream.write("%s%s  %d/%d %s  %3.0f%%  %.0f/s  ETA %ds%s" % (
            start, self.label, self.done, self.total, self.unit, pct, rate, int(left + 0.5), end))
        self.stream.flush()

    def close(self):
        if self.enabled:
            self._draw("\r" if self._tty else "", "\n")


@contextlib.contextmanager
def quiet_stdout():
    """Silence prints from code we call (donkeycar's banner, makemovie's): stdout is for the table."""
    saved = sys.stdout
    with open(os.devnull, "w") as sink:
        sys.stdout = sink
        try:
            yield
        finally:
            sys.stdout = saved
