"""Progress of long training steps: each step says when it starts and ends, and a heartbeat says it is
still running (step, elapsed) so that a long teacher fit is never a silent one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Say = Callable[[str], None]
HEARTBEAT_SECONDS = 15.0


class Heartbeat:
    """Says ``[step] still running, N s`` each time it beats; a thread beats it every ``every`` seconds."""

    def __init__(self, step: str, say: Say, clock: Callable[[], float] = time.monotonic) -> None:
        self.step, self._say, self._clock = step, say, clock
        self.started = clock()

    def elapsed(self) -> float:
        return self._clock() - self.started

    def beat(self) -> None:
        self._say(f"[{self.step}] still running, {self.elapsed():.0f} s")


@contextmanager
def reporting(step: str, say: Say | None, every: float = HEARTBEAT_SECONDS) -> Iterator[Heartbeat | None]:
    """Announce the step, beat while it runs, and say how long it took."""
    if say is None:
        yield None
        return
    heart, stop = Heartbeat(step, say), threading.Event()
    say(f"[{step}] started")

    def run() -> None:
        while not stop.wait(every):
            heart.beat()

    thread = threading.Thread(target=run, name=f"slimserve-heartbeat-{step}", daemon=True)
    thread.start()
    try:
        yield heart
    finally:
        stop.set()
        thread.join()
    say(f"[{step}] done in {heart.elapsed():.1f} s")
