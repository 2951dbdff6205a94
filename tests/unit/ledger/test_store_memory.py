from __future__ import annotations

from wakeline.ledger.store_memory import MemoryLedgerStore

from .store_contract import LedgerStoreContract


class TestMemoryLedgerStore(LedgerStoreContract):
    def make_store(self) -> MemoryLedgerStore:
        return MemoryLedgerStore()
