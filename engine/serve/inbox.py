"""A session's bounded queue of driving frames between the socket and the engine.

Drop policy ``drop_oldest`` (the default, for live cameras): when ``maxlen`` frames are waiting
and another arrives, the oldest waiting frame is discarded and counted, so the engine always works
on the freshest frames and the queue adds at most ``maxlen`` frames of delay however fast the
client sends. Policy ``block`` (for files, where every frame matters): the socket is not read
while the queue is full, so TCP flow control slows the sender; nothing is dropped.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

POLICIES = ("drop_oldest", "block")


@dataclass(frozen=True)
class Item:
    seq: int  # the client's frame number (every frame it sent, dropped ones too)
    timestamp: float | None  # the client's capture timestamp, echoed
    payload: bytes  # JPEG / WebP
    received: float  # time.monotonic() at receipt, for the server latency


class Inbox:
    def __init__(self, maxlen: int, policy: str = "drop_oldest") -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}")
        self.maxlen, self.policy = maxlen, policy
        self._items: deque[Item] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def offer(self, item: Item) -> tuple[bool, int]:
        """Add ``item``; -> (accepted, frames dropped by this call). Under ``block`` a full queue
        refuses the item (the caller waits and offers it again); under ``drop_oldest`` it never does."""
        with self._cond:
            if self._closed:
                return False, 0
            dropped = 0
            if len(self._items) >= self.maxlen:
                if self.policy == "block":
                    return False, 0
                while len(self._items) >= self.maxlen:
                    self._items.popleft()
                    dropped += 1
            self._items.append(item)
            self.dropped += dropped
            self._cond.notify()
            return True, dropped

    def get(self) -> Item | None:
        """The next frame, waiting for one; None once the queue is closed and empty."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        """No more frames (the frames already queued are still delivered)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self) -> None:
        """Close and forget the waiting frames."""
        with self._cond:
            self._items.clear()
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
