"""Ctrl-C and SIGTERM during training: stop at a clean point instead of mid-write.

The first SIGINT or SIGTERM only sets a flag; the training loop reads it once per step (a
plain attribute read, no host sync) and stops by raising `Interrupted`. The epoch in progress
is discarded: the last end-of-epoch checkpoint is already on disk, complete, and resuming
replays the discarded steps exactly, so nothing is lost but the time of a partial epoch.
Saving mid-epoch instead would need the loop's in-epoch position and loss sums in the
checkpoint too, for a saving of at most one epoch.

A second signal raises at once: the atomic writes in `runs` delete their temporary file and
leave the previous checkpoint untouched, so even an impatient user cannot corrupt it.

A signal that lands after a run's last check (its last validation pass or checkpoint) lets
the run finish, and is kept as pending: commands that train run after run (seed groups,
sweeps) call `raise_pending` before the next one, so the signal still stops them.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fashionlab import runs

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal; the exit code is 128 + its number, as shells report it."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = 128 + signum


@dataclass
class Flag:
    """Set by the first signal; `signum` stays None until then."""

    signum: int | None = None

    def error(self, where: str) -> Interrupted:
        """The exception to raise once the flag is set; `where` says what was abandoned."""
        return Interrupted(self.signum, f"interrupted by {signal.Signals(self.signum).name} "
                                        f"{where}")


@contextmanager
def graceful() -> Iterator[Flag]:
    """Catch SIGINT/SIGTERM into a Flag for the duration; a no-op off the main thread."""
    flag = Flag()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # only the main thread may install handlers (e.g. a web server's worker)
        return

    def handle(signum: int, frame) -> None:
        if flag.signum is not None:
            raise Interrupted(signum, f"interrupted again by {signal.Signals(signum).name}")
        flag.signum = signum

    previous = {s: signal.signal(s, handle) for s in HANDLED}
    try:
        yield flag
    except BaseException:
        raise
    else:
        if flag.signum is not None:  # caught, but the loop had no step left to stop at
            _pending.append(flag.signum)
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


_pending: list[int] = []


def raise_pending(where: str) -> None:
    """Raise `Interrupted` for a signal a finished run caught too late to stop at."""
    if _pending:
        signum = _pending.pop()
        _pending.clear()
        raise Interrupted(signum, f"interrupted by {signal.Signals(signum).name} {where}")


def clear_pending() -> None:
    """A new command starts with none (a finished single run's late signal stops nothing)."""
    _pending.clear()


def guarded(run_dir: Path, fit: Callable[[Flag], None]) -> None:
    """Run an engine's training loop with signals caught; record how it ended in run.json
    (interrupted, diverged, failed) and name the run on an interrupt so the CLI can say how to
    resume it. Both engines train through this."""
    try:
        with graceful() as interrupt:
            fit(interrupt)
    except KeyboardInterrupt as e:
        if not isinstance(e, Interrupted):
            e = Interrupted(signal.SIGINT, "interrupted by the user")
        runs.record_end(run_dir, e)
        e.run_dir = run_dir
        raise e from None
    except BaseException as e:
        runs.record_end(run_dir, e)
        raise
