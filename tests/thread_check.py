"""Test helper shared by the real-time and GUI tests: threads left running."""

import threading
import time


def leftover_threads(before, timeout=3.0):
    """Threads started since ``before`` that are still alive after ``timeout`` s."""
    deadline = time.perf_counter() + timeout
    while True:
        alive = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not alive or time.perf_counter() > deadline:
            return alive
        time.sleep(0.05)
