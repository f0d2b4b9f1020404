"""Ctrl-C ends a command within a few seconds, even inside a long native call.

Python runs its SIGINT handler (KeyboardInterrupt) only when the main thread is back in the
interpreter. A command spends minutes inside single native calls (one attention over half a
million tokens, the video processor on thousands of frames, a big import), so Ctrl-C used to
wait for the call's end, or was lost. :func:`interrupts_end_the_process` lets the signal's C
handler wake a watcher thread (``signal.set_wakeup_fd``); when the main thread has not unwound
within ``grace_s`` seconds, the watcher ends the process with status 130 without flushing
stdout, so nothing partial is printed (files are written to a temporary name and renamed, so
none is left half-written either).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator

#: Seconds the main thread gets to unwind normally (KeyboardInterrupt) before the process ends.
GRACE_S = 2.0
INTERRUPTED_STATUS = 130  # 128 + SIGINT, what shells report for Ctrl-C


@contextlib.contextmanager
def interrupts_end_the_process(command: str = "llava-aim", grace_s: float = GRACE_S) -> Iterator[None]:
    """While inside, a SIGINT ends the process within ``grace_s`` s (status 130)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) in (
            signal.SIG_IGN, None):
        yield  # set_wakeup_fd needs the main thread; an ignored SIGINT stays ignored
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # not the main interpreter
        os.close(read_fd)
        os.close(write_fd)
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while True:
            data = os.read(read_fd, 64)
            if not data or done.is_set():
                return
            if signal.SIGINT not in data:
                continue
            if done.wait(grace_s):  # the main thread unwound in time: the normal path
                return
            sys.stderr.write(f"{command}: interrupted\n")
            sys.stderr.flush()
            os._exit(INTERRUPTED_STATUS)  # no atexit, no stdout flush: nothing partial

    watcher = threading.Thread(target=watch, name="llava-aim-interrupt", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(previous)
        os.write(write_fd, b"\0")  # wake the watcher to return
        watcher.join(timeout=1.0)
        os.close(write_fd)
        os.close(read_fd)
