"""An example outside world for Wakeline's tests and demo: the systems an agent acts on.

Five small services on PostgreSQL (schema `world`), each with its undo:

| service     | does                              | undone by                                   |
| ----------- | --------------------------------- | ------------------------------------------- |
| `payments`  | `charge`                          | `refund`                                    |
| `crm`       | `update` (a new version)          | `restore` (an earlier version, as a new one)|
| `email`     | `send` (queued in an outbox)      | `recall` while queued, then `send_correction`|
| `inventory` | `reserve`                         | `release`                                   |
| `cloud`     | `create_vm`                       | `delete_vm`                                 |

    world = World(dsn)
    world.install()
    charge = world.payments.charge("cus_1", 1299, "EUR", idempotency_key="k1")
    world.payments.refund(charge["charge_id"], idempotency_key="undo-k1")
    world.stats()["payments.refund"]   # {"requested": 1, "performed": 1, ...}

Every changing operation honours its idempotency key, is counted (`stats`, `performed`,
`calls`), and can be made to fail on demand (`inject`). `wakeline_world.tools` declares the
operations as Wakeline tools. The rules are in `wakeline_world.core`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wakeline_world import core
from wakeline_world.core import (
    Conflict,
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
    OutOfStock,
    PermanentFailure,
    TooLate,
    TransientFailure,
    WorldError,
    calls,
    clear_faults,
    fired,
    inject,
    install,
    performed,
    reset,
    stats,
)
from wakeline_world.services import Cloud, Crm, Email, Inventory, Payments

#: every operation an agent (or a compensating action) calls, as `service.method`
OPERATIONS = (
    "payments.charge",
    "payments.refund",
    "crm.get",
    "crm.update",
    "crm.restore",
    "email.send",
    "email.recall",
    "email.send_correction",
    "inventory.stock",
    "inventory.reserve",
    "inventory.release",
    "cloud.create_vm",
    "cloud.delete_vm",
)


class World:
    """The five services bound to one database. Holds no connection: each operation opens
    its own, so one `World` serves any number of threads (and is cheap to make per process)."""

    def __init__(self, dsn: str, *, email_hold_s: float = 0.0) -> None:
        self.dsn = dsn
        self.payments = Payments(dsn)
        self.crm = Crm(dsn)
        self.email = Email(dsn, hold_s=email_hold_s)
        self.inventory = Inventory(dsn)
        self.cloud = Cloud(dsn)

    def install(self) -> World:
        install(self.dsn)
        return self

    def reset(self) -> World:
        reset(self.dsn)
        return self

    def stats(self) -> dict[str, dict[str, int]]:
        return stats(self.dsn)

    def performed(self, operation: str) -> dict[str, int]:
        return performed(self.dsn, operation)

    def calls(self, operation: str | None = None) -> list[dict[str, Any]]:
        return calls(self.dsn, operation)

    def inject(self, operation: str, kind: core.FaultKind = "transient", **options: Any) -> int:
        return inject(self.dsn, operation, kind, **options)

    def clear_faults(self) -> None:
        clear_faults(self.dsn)

    def tool(self, name: str) -> Callable[..., Any]:
        """The function behind operation `name` ("payments.charge"), for `ctx.call`."""
        if name not in OPERATIONS:
            raise KeyError(f"the example world has no operation {name!r}")
        service, method = name.split(".")
        return getattr(getattr(self, service), method)

    def tools(self) -> dict[str, Callable[..., Any]]:
        return {name: self.tool(name) for name in OPERATIONS}


__all__ = [
    "OPERATIONS",
    "Cloud",
    "Conflict",
    "Crm",
    "Email",
    "IdempotencyConflict",
    "InvalidRequest",
    "Inventory",
    "NotFound",
    "OutOfStock",
    "Payments",
    "PermanentFailure",
    "TooLate",
    "TransientFailure",
    "World",
    "WorldError",
    "calls",
    "clear_faults",
    "fired",
    "inject",
    "install",
    "performed",
    "reset",
    "stats",
]
