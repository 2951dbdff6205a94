"""PostgresLedgerStore against a real PostgreSQL: the store contract and the append-only guard."""

from __future__ import annotations

import psycopg
import pytest

from tests.unit.ledger.store_contract import LedgerStoreContract, seal  # noqa: I001
from wakeline.ledger import BLAKE3
from wakeline.ledger.segments import PartitionChain
from wakeline.ledger.store_postgres import PostgresLedgerStore

pytestmark = pytest.mark.integration


class TestPostgresLedgerStore(LedgerStoreContract):
    @pytest.fixture(autouse=True)
    def _dsn(self, fresh_dsn: str) -> None:
        self.dsn = fresh_dsn

    def make_store(self) -> PostgresLedgerStore:
        return PostgresLedgerStore(self.dsn)


@pytest.mark.parametrize("table", ["ledger_segments", "ledger_entries", "ledger_checkpoints"])
def test_ledger_tables_refuse_update_delete_and_truncate(fresh_dsn: str, table: str) -> None:
    from wakeline.ledger.checkpoints import generate_signer
    from wakeline.ledger.service import checkpoint_now

    with PostgresLedgerStore(fresh_dsn) as store:
        store.append_segment(*seal(store, PartitionChain(BLAKE3, 0), [0, 1]))
        checkpoint_now(store, [generate_signer("t")], "t", time_ms=1)
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        for sql in (
            f"UPDATE {table} SET stored_at = now()"
            if table != "ledger_entries"
            else f"UPDATE {table} SET leaf = ''::bytea",
            f"DELETE FROM {table}",
            f"TRUNCATE {table} CASCADE",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(sql)
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] > 0
