"""Progress of long jobs: a tqdm bar on a terminal, plain log lines everywhere else.

msrun worker logs, `nohup`, CI and `| tee` send stderr to files; a bar there writes a carriage return
per refresh and the log grows by megabytes of half-lines. `progress_bar` looks at the stream it
would write to: a terminal gets tqdm; anything else gets a `LineProgress`, which prints one whole line
each time `every` units have passed (the trainer passes `train.log_every`) or, without `every`, each
`seconds`, plus a last line on close:

    train 120/400 step (30.0%) | loss 5.1234 | lr 2.95e-04 | grad_norm 0.812 | tok/s 10432 | 3.12 step/s | elapsed 0:00:38 | ETA 0:01:30

the fields a MindFormers user reads in a worker log (step, loss, lr, global norm, throughput, time
remaining). The rate and the ETA use the interval since the previous line, so a slow first step
(graph compilation) does not inflate every later estimate. `PANGU_PRO_PROGRESS=bar|lines` forces one kind. Both kinds offer what the jobs use:
update, set_postfix, write, close, iteration over a wrapped iterable, and the context manager.
"""
from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from typing import Iterable, Optional, TextIO

MODES = ("bar", "lines")
DEFAULT_SECONDS = 30.0


def progress_mode(stream: TextIO) -> str:
    """'bar' on a terminal, else 'lines'; PANGU_PRO_PROGRESS overrides."""
    forced = os.environ.get("PANGU_PRO_PROGRESS", "").strip().lower()
    if forced:
        if forced not in MODES:
            raise ValueError(f"PANGU_PRO_PROGRESS={forced!r}: expected one of {', '.join(MODES)}")
        return forced
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def progress_bar(iterable: Optional[Iterable] = None, *, total: Optional[float] = None, desc: str = "",
                 unit: str = "it", initial: float = 0, disable: bool = False, unit_scale: bool = False,
                 every: Optional[int] = None, seconds: float = DEFAULT_SECONDS, file: Optional[TextIO] = None):
    """A tqdm bar or a LineProgress (module doc); `every`/`seconds` only matter for lines."""
    file = file or sys.stderr
    if iterable is not None and total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if progress_mode(file) == "bar":
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable,
                    unit_scale=unit_scale, dynamic_ncols=True, file=file)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable,
                        unit_scale=unit_scale, every=every, seconds=seconds, file=file)


def scaled(value: float) -> str:
    """1234567 -> '1.23M' (k, M, G, T)."""
    for suffix, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}" if value != int(value) else str(int(value))


def clock(seconds: float) -> str:
    return str(timedelta(seconds=int(max(seconds, 0))))


class LineProgress:
    """One log line per `every` units (or per `seconds` without `every`), never a carriage return."""

    def __init__(self, iterable=None, *, total=None, desc="", unit="it", initial=0, disable=False,
                 unit_scale=False, every=None, seconds=DEFAULT_SECONDS, file=None, clock_fn=time.monotonic):
        if every is not None and every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = initial
        self.disable, self.unit_scale, self.every, self.seconds = disable, unit_scale, every, seconds
        self.file = file or sys.stderr
        self._now = clock_fn
        self._start = self._last_time = clock_fn()
        self._last_n = initial
        self._postfix: dict = {}
        self._closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set_postfix(self, ordered_dict=None, refresh=True, **values) -> None:
        self._postfix = {**(ordered_dict or {}), **values}

    def write(self, message: str) -> None:
        if not self.disable:
            print(message, file=self.file, flush=True)

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.disable:
            return
        due = (self.n - self._last_n >= self.every) if self.every else (self._now() - self._last_time >= self.seconds)
        if due:
            self._emit()

    def close(self) -> None:
        if not self._closed and not self.disable and self.n != self._last_n:
            self._emit()
        self._closed = True

    def line(self) -> str:
        """The current state as one line (module doc)."""
        number = scaled if self.unit_scale else (lambda v: str(int(v)) if v == int(v) else f"{v:.3g}")
        now = self._now()
        elapsed = now - self._start
        # the rate since the previous line: the first step's compilation does not skew later ETAs
        window = now - self._last_time
        rate = (self.n - self._last_n) / window if window > 0 and self.n > self._last_n else 0.0
        head = f"{self.desc} {number(self.n)}"
        if self.total:
            head += f"/{number(self.total)} {self.unit} ({100 * self.n / self.total:.1f}%)"
        else:
            head += f" {self.unit}"
        parts = [head] + [f"{key} {value}" for key, value in self._postfix.items()]
        parts.append(f"{scaled(rate) if self.unit_scale else f'{rate:.3g}'} {self.unit}/s")
        parts.append(f"elapsed {clock(elapsed)}")
        if self.total and rate > 0:
            parts.append(f"ETA {clock((self.total - self.n) / rate)}")
        return " | ".join(parts).strip()

    def _emit(self) -> None:
        print(self.line(), file=self.file, flush=True)
        self._last_n, self._last_time = self.n, self._now()
