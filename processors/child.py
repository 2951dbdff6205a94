"""The default `wakeline worker` is two processes: the ledger builder here, the audit
publisher in a child (`wakeline worker --no-builder`), so each has a core and its own GIL.

Measured on the 2-core dev machine (docs/decisions.md): one process ~16k events/s, builder
and auditor in two processes ~21k/s. The child's lifecycle is tied to this process:

- it dies with its parent: PR_SET_PDEATHSIG=SIGKILL, set in the child before it runs Python,
  so a kill -9 of the worker leaves no orphan auditor behind (and if the parent is already
  gone by then, the child exits at once);
- a SIGTERM/SIGINT to the parent is forwarded (once) when the parent begins to stop, and
  the parent waits for the child before it exits, killing it if it is not gone within the
  parent's own shutdown deadline (shutdown.py);
- if the child exits on its own, the parent stops and exits non-zero.

`wakeline worker` starts the child at nice 10, as the measured split deployment runs its
auditor: the ledger comes first, and the audit catches up when the builder waits.

The audit publisher is at-least-once (faust commits the ledger topic's offsets after the
work), so a SIGKILL of the child loses nothing: the next one audits from the last commit.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

from wakeline.errors import WakelineError

from .shutdown import DEADLINE

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1

_WORKER = "import sys\nfrom wakeline.cli.worker import worker\nworker(sys.argv[1:])\n"


class AuditChildFailed(WakelineError):
    """The audit publisher's process exited while the worker was running."""


def _die_with(parent: int, nice: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child between fork and exec
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            os._exit(70)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(70)
        if nice:
            os.nice(nice)

    return preexec


class AuditChild:
    """`wakeline worker --no-builder <args>` as a child that lives and dies with us."""

    def __init__(self, args: Sequence[str], *, nice: int = 0) -> None:
        self.args = list(args)
        self.nice = nice
        self.proc: subprocess.Popen[bytes] | None = None
        self.failed: int | None = None
        self._stopping = False
        self._lock = threading.Lock()

    def start(self, on_failure: Callable[[], None]) -> None:
        """Start the child (call from the main thread: PDEATHSIG follows the thread that
        forked) and watch it; `on_failure` runs if it exits before `stop`."""
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, "--no-builder", *self.args],
            preexec_fn=_die_with(os.getpid(), self.nice),
        )
        threading.Thread(
            target=self._watch, args=(on_failure,), name="audit-child-watch", daemon=True
        ).start()

    def _watch(self, on_failure: Callable[[], None]) -> None:
        assert self.proc is not None
        rc = self.proc.wait()
        with self._lock:
            if self._stopping:
                return
            self.failed = rc
        log.critical("audit publisher process %d exited with %d; stopping", self.proc.pid, rc)
        on_failure()

    def terminate(self) -> None:
        """Forward the stop to the child, once (does not wait). A second SIGTERM could reach
        the child after its faust loop has closed and kill it mid-drain."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float | None = None) -> int | None:
        """Terminate the child and wait for it; its exit code. SIGKILL after `timeout`, by
        default a second before this process's own shutdown deadline."""
        self.terminate()
        if self.proc is None:
            return None
        if timeout is None:
            timeout = max(0.5, DEADLINE.remaining() - 1.0)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def stop_self() -> None:
    """Ask this process to stop as SIGTERM would (faust's graceful shutdown)."""
    os.kill(os.getpid(), signal.SIGTERM)
