"""A worker stops within SHUTDOWN_DEADLINE_S of SIGTERM/SIGINT, whatever the broker did.

The clean stop (faust stops its services, the builder drains, stores and publishes what is
pending, the audit child stops) usually takes one to three seconds. Whatever hangs past the
deadline (a client retrying a group coordinator, a flush waiting on an unreachable broker, a
thread nobody told to stop) is cut short: the process logs what was still running and exits
with EXIT_DEADLINE. The ledger's correctness never depends on a clean stop: positions live in
PostgreSQL and the next worker resumes from there (the kill -9 crash tests prove it).

A signal can arrive at three moments, each handled here:

- while the process boots, before faust has installed its own handlers: `install_boot_handlers`
  turns it into SystemExit(0) (nothing has started that needs draining);
- while faust runs: faust's handlers start its graceful stop; `DeadlineWorker` (app.py) arms
  the deadline first;
- after faust's loop has closed (it restores the default action, so a second SIGTERM would
  kill the process mid-drain): `install_stopping_handlers` arms the deadline and ignores it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

#: seconds from the first stop signal to a forced exit
SHUTDOWN_DEADLINE_S = 8.0
#: exit code of a stop cut short by the deadline (EX_TEMPFAIL: start it again)
EXIT_DEADLINE = 75

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Deadline:
    """Once armed, exits the process after `seconds` unless it has exited by then."""

    def __init__(self, seconds: float = SHUTDOWN_DEADLINE_S) -> None:
        self.seconds = seconds
        self._timer: threading.Timer | None = None
        self._armed_at = 0.0
        self._lock = threading.Lock()

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def remaining(self) -> float:
        """Seconds left before the forced exit (all of them while not armed)."""
        if self._timer is None:
            return self.seconds
        return max(0.0, self.seconds - (time.monotonic() - self._armed_at))

    def arm(self, why: str) -> None:
        with self._lock:
            if self._timer is not None:
                return
            log.info("stopping (%s); forced exit in %.0f s if not done", why, self.seconds)
            self._armed_at = time.monotonic()
            self._timer = threading.Timer(self.seconds, self._expire, args=(why,))
            self._timer.daemon = True
            self._timer.name = "shutdown-deadline"
            self._timer.start()

    def _expire(self, why: str) -> None:
        running = sorted(
            t.name for t in threading.enumerate() if t.is_alive() and t is not self._timer
        )
        log.critical(
            "shutdown (%s) not done after %.0f s; exiting now with %d, still running: %s "
            "(nothing is lost: the next worker resumes from PostgreSQL)",
            why, self.seconds, EXIT_DEADLINE, ", ".join(running),
        )  # fmt: skip
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):  # exiting anyway
                handler.flush()
        sys.stderr.flush()
        os._exit(EXIT_DEADLINE)


#: the process's one deadline (a worker process stops once)
DEADLINE = Deadline()


def install_boot_handlers() -> None:
    """Until faust takes over: a stop signal ends the boot with SystemExit(0)."""

    def on_signal(signum: int, frame: Any) -> None:
        DEADLINE.arm(f"{signal.Signals(signum).name} while starting")
        raise SystemExit(0)

    for sig in _SIGNALS:
        signal.signal(sig, on_signal)


def install_stopping_handlers() -> None:
    """Once faust is done: a further stop signal must not kill the drain; the deadline
    bounds it."""

    def on_signal(signum: int, frame: Any) -> None:
        DEADLINE.arm(signal.Signals(signum).name)
        log.info("%s: already stopping", signal.Signals(signum).name)

    if threading.current_thread() is threading.main_thread():
        for sig in _SIGNALS:
            signal.signal(sig, on_signal)
