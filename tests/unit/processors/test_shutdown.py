"""The worker's shutdown bound (processors/shutdown.py), in throwaway processes."""

from __future__ import annotations

import signal
import subprocess
import sys

from wakeline.processors.shutdown import EXIT_DEADLINE


def _python(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_the_deadline_ends_a_stop_that_hangs_and_says_what_was_running() -> None:
    proc = _python(
        "import logging, threading\n"
        "from wakeline.processors.shutdown import Deadline\n"
        "logging.basicConfig()\n"
        "threading.Thread(target=threading.Event().wait, name='stuck-consumer').start()\n"
        "Deadline(0.2).arm('test')\n"
    )  # the non-daemon thread never ends: only the deadline can end this process
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_DEADLINE, out
    assert "exiting now" in out and "stuck-consumer" in out, out


def test_a_stop_signal_while_booting_exits_cleanly() -> None:
    proc = _python(
        "import sys, time\n"
        "from wakeline.processors.shutdown import install_boot_handlers\n"
        "install_boot_handlers()\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out


def test_a_second_signal_after_faust_does_not_kill_the_drain() -> None:
    proc = _python(
        "import os, signal, time\n"
        "from wakeline.processors.shutdown import install_stopping_handlers\n"
        "install_stopping_handlers()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(0.1)\n"
        "print('drained', flush=True)\n"
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "drained" in out
