"""MemoryLedgerStore: the in-memory twin of PostgresLedgerStore, for unit tests and tools."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from .checkpoints import parse_body, split_note
from .errors import ChainConflict
from .segments import SegmentHeader
from .store import Entry, LedgerStore, check_append, check_checkpoint


class MemoryLedgerStore(LedgerStore):
    def __init__(self) -> None:
        self._headers: dict[int, list[SegmentHeader]] = {}
        self._frontiers: dict[int, list[bytes]] = {}
        self._entries: dict[int, list[Entry]] = {}
        self._by_event: dict[str, Entry] = {}
        self._notes: list[bytes] = []

    def append_segment(
        self,
        header: SegmentHeader,
        entries: Sequence[Entry],
        frontier: Sequence[bytes],
        *,
        hashed_by_caller: bool = False,
    ) -> bool:
        chain = self._headers.get(header.partition, [])
        if header.segment_number < len(chain):
            if chain[header.segment_number].to_bytes() == header.to_bytes():
                return False
            raise ChainConflict(
                f"partition {header.partition} segment {header.segment_number} is already "
                "stored with a different header"
            )
        check_append(
            header, entries, chain[-1] if chain else None, hashed_by_caller=hashed_by_caller
        )
        self._headers.setdefault(header.partition, []).append(header)
        self._frontiers[header.partition] = list(frontier)
        self._entries.setdefault(header.partition, []).extend(entries)
        for e in entries:
            if e.event_id is not None:
                self._by_event.setdefault(e.event_id, e)
        return True

    def add_checkpoint(self, note: bytes) -> bool:
        if self._notes:
            new = parse_body(split_note(note)[0])
            for old in self._notes:
                if parse_body(split_note(old)[0]).seq == new.seq:
                    if old == note:
                        return False
                    raise ChainConflict(f"checkpoint seq {new.seq} is already stored")
        check_checkpoint(note, self._notes[-1] if self._notes else None)
        self._notes.append(note)
        return True

    def partitions(self) -> list[int]:
        return sorted(self._headers)

    def last_segment(self, partition: int) -> tuple[SegmentHeader, list[bytes]] | None:
        chain = self._headers.get(partition)
        if not chain:
            return None
        return chain[-1], list(self._frontiers[partition])

    def headers(self, partition: int) -> Iterator[SegmentHeader]:
        return iter(list(self._headers.get(partition, [])))

    def entries(self, partition: int, start: int = 0, stop: int | None = None) -> Iterator[Entry]:
        return iter(self._entries.get(partition, [])[start:stop])

    def entry_by_event_id(self, event_id: str) -> Entry | None:
        return self._by_event.get(event_id)

    def entries_for_workflow(self, workflow_id: str) -> list[Entry]:
        return [
            e
            for p in sorted(self._entries)
            for e in self._entries[p]
            if e.key is not None and e.key == workflow_id.encode("utf-8", "surrogatepass")
        ]

    def checkpoints(self) -> Iterator[bytes]:
        return iter(list(self._notes))

    def latest_checkpoint(self) -> bytes | None:
        return self._notes[-1] if self._notes else None
