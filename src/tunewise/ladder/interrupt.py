"""SIGTERM handled like Ctrl-C.

A job run in the background (``nohup``, ``&`` in a script, a batch scheduler, ``timeout``) is
stopped with SIGTERM, not SIGINT: Python's default for SIGTERM kills the process on the spot, so
no ``except KeyboardInterrupt`` runs. The ladder and the trainer already know how to stop cleanly
on Ctrl-C (record the interrupted training run, keep the finished stages, say how to resume).
:func:`sigterm_as_interrupt` makes SIGTERM take the same path by raising :class:`Terminated`, a
``KeyboardInterrupt``, in the main thread; ``tunewise run`` and ``tunewise train`` run inside it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

# The shell's convention for a process ended by signal N: 128 + N.
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""

    # What the trainer records as the cause (tunewise.train cannot import this module: it sits
    # below the ladder, so it reads the name from the exception, "Ctrl-C" when there is none).
    signal_name = "SIGTERM"


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`; the previous handler comes back after.

    Only the main thread may set a signal handler; elsewhere (a server's worker thread) the block
    runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
