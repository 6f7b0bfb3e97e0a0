"""Stopping a training run when the cluster says so: finish the step, save it, exit 75.

Schedulers stop jobs with SIGTERM (some send SIGUSR1 first, a user presses Ctrl-C). For each signal
named in `train.stop_signals` the trainer installs `StopSignals`: the handler only records the signal;
the loop finishes the step it is in, and at the step boundary every rank asks `any_rank` whether any
rank got one (`collective.any_rank`: an all-reduce of a 0/1 flag, one float per step: a rank that got no signal still
takes part, so all ranks stop after the same step). Then the saving ranks write that step's
checkpoint, all ranks meet once more (so no rank exits while rank 0 is still writing; msrun kills
the others as soon as one worker exits with an error), and the run ends with `PREEMPTED_EXIT`.
`--resume` continues from that checkpoint exactly as if the run had not stopped.

A second signal changes nothing (the launcher and the scheduler may both deliver one); SIGKILL stops
at once, losing the steps since the last checkpoint. Signals that arrive before the training loop
starts (while the model compiles) are acted on at the first step boundary; tools/train.py (what
msrun starts) catches them from its first line (`catch_early`).
"""
from __future__ import annotations

import signal
from typing import Optional

PREEMPTED_EXIT = 75  # sysexits EX_TEMPFAIL: stopped on request with a checkpoint; run again with --resume


_early: Optional[str] = None  # a stop signal caught by `catch_early` before the trainer started


def catch_early(names=("SIGTERM", "SIGINT", "SIGUSR1")) -> None:
    """Record a stop signal that arrives while the process starts up (tools/train.py calls this before
    anything else, so the pid a launcher learns is already covered); `StopSignals` takes it over."""
    def record(signum, frame):
        global _early
        _early = _early or signal.Signals(signum).name

    for name in names:
        signal.signal(signal.Signals[name], record)


class StopSignals:
    """Record the first of `names` (e.g. ["SIGTERM", "SIGINT"]) that arrives, while in the `with` body;
    the previous handlers come back afterwards. Only the main thread can install handlers: elsewhere
    (a test's worker thread) nothing is installed."""

    def __init__(self, names):
        self.signals = [signal.Signals[name] for name in names]
        self.received: Optional[str] = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        try:
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            self.__exit__()
        if _early is not None:
            if signal.Signals[_early] in self.signals:
                self.received = _early
            else:  # caught early, but train.stop_signals does not name it: what it would have done then
                signal.signal(signal.Signals[_early], signal.SIG_DFL)
                signal.raise_signal(signal.Signals[_early])
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
