"""`stack up` twice is a no-op the second time; `down` leaves no process and frees the ports.

Runs a second, private stack (own home, own ports) so the shared one keeps serving the
other tests.
"""

from __future__ import annotations

import os
import shutil

import pytest

from wakeline.devstack import stack
from wakeline.infra.settings import KafkaSettings, StackSettings

pytestmark = pytest.mark.integration


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone too
        return f.read().split(")")[-1].split()[0] == "Z"


def test_private_stack_up_up_down(local_stack: StackSettings, tmp_path) -> None:
    if KafkaSettings.from_env().external:
        pytest.skip("external broker configured")
    port = local_stack.kafka_port + 100
    private = StackSettings(home=tmp_path / "home", kafka_port=port, controller_port=port + 1)
    if not (stack.port_is_free(port) and stack.port_is_free(port + 1)):
        pytest.skip(f"ports {port}/{port + 1} are in use on this machine")
    # reuse the shared stack's jar cache: this test is about processes, not downloads
    shutil.copytree(local_stack.kafka_dir / "libs", private.kafka_dir / "libs", symlinks=True)
    try:
        first = stack.up(private)
        assert first["kafka"]["started"] and first["postgres"]["started"]
        second = stack.up(private)
        assert not second["kafka"]["started"] and not second["postgres"]["started"]
        assert second["kafka"]["pid"] == first["kafka"]["pid"]
        status = stack.status(private)
        assert status["kafka"]["running"] and status["postgres"]["running"]
        assert status["kafka"]["version"] == stack.kafka_version_pinned()
    finally:
        stopped = stack.down(private)
    assert stopped == {"kafka": True, "postgres": True}
    assert _gone(first["kafka"]["pid"]) and _gone(first["postgres"]["pid"])
    assert stack.port_is_free(port) and stack.port_is_free(port + 1)
    assert stack.down(private) == {"kafka": False, "postgres": False}


def test_taken_port_gives_one_clear_error(local_stack: StackSettings, tmp_path) -> None:
    if KafkaSettings.from_env().external:
        pytest.skip("external broker configured")
    # the shared broker holds local_stack.kafka_port: a second home on that port must refuse
    clash = StackSettings(
        home=tmp_path / "clash", kafka_port=local_stack.kafka_port,
        controller_port=local_stack.kafka_port + 7,
    )  # fmt: skip
    with pytest.raises(stack.StackError, match=f"port {local_stack.kafka_port} .* is taken"):
        stack.start_kafka(clash)
