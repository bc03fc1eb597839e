"""A one-line status on a terminal while a long run works: what it is doing, updated in place."""

from __future__ import annotations

import time


class Progress:
    """Writes `prefix + text` over the same line of `stream` (a terminal), at most every
    `interval` seconds, and clears the line when done. Quiet for runs shorter than `delay`."""

    def __init__(self, stream, prefix: str = "", interval: float = 0.2, delay: float = 0.5):
        self.stream = stream
        self.prefix = prefix
        self.interval = interval
        self.started = time.monotonic()
        self.next = self.started + delay
        self.shown = 0

    def __call__(self, text: str):
        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + self.interval
        line = f"{self.prefix}{text}"[:200]
        self.stream.write("\r" + line + " " * max(0, self.shown - len(line)))
        self.stream.flush()
        self.shown = len(line)

    def done(self):
        if self.shown:
            self.stream.write("\r" + " " * self.shown + "\r")
            self.stream.flush()
            self.shown = 0
