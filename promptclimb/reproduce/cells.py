"""Cells (one search each) and the resumable results store they are recorded in."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Cell:
    """One search: a (dataset, seed, backbone) under a profile and a number of shots."""

    profile: str
    shots: int
    dataset: str
    seed: int
    backbone: str

    @property
    def key(self) -> str:
        """Stable identity of the cell in the store."""
        return f"search/{self.profile}/{self.shots}shot/{self.dataset}/seed{self.seed}/{self.backbone}"

    @property
    def dataset_id(self) -> str:
        """The scorer dataset id of this few-shot sample."""
        return dataset_id(self.dataset, self.shots, self.seed)

    def request_id(self, attempt: int = 0, models: Sequence[str] = ()) -> str:
        """Idempotency key of the search: a rerun finds the search a killed run started.

        ``models``: the search's model and transfer models; they are part of the key, since the
        coordinator answers a known key with its search whatever the spec sent with it.
        """
        identity = self.key + "".join(f"|{m}" for m in models)
        digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        return f"reproduce-{digest}" + (f"-{attempt}" if attempt else "")


def dataset_id(name: str, shots: int, seed: int) -> str:
    """Scorer dataset id of one few-shot sample, e.g. ``oxford_pets-1shot-seed2``."""
    return f"{name}-{shots}shot-seed{seed}"


def transfer_key(cell: Cell, target: str) -> str:
    """Store key of a transfer record of earlier versions (found prompts of ``cell`` scored on ``target``).

    Now the transfer scores are part of the cell's own record (its search's ``result.transfer``).
    """
    return (
        f"transfer/{cell.profile}/{cell.shots}shot/{cell.dataset}/seed{cell.seed}/{cell.backbone}->{target}"
    )


class ResultsStore:
    """Finished cells as JSON lines; an append is flushed and fsynced before it counts.

    A line cut short by a kill (the only partial write an append can leave) is ignored on read.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a torn last line from a killed run
                if isinstance(record, dict) and "key" in record:
                    self.records[record["key"]] = record

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def get(self, key: str) -> dict[str, Any] | None:
        """The record of ``key``, if finished."""
        return self.records.get(key)

    def add(self, record: dict[str, Any]) -> None:
        """Append a finished record durably."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self.path.read_bytes() if self.path.exists() else b""
        with self.path.open("a", encoding="utf-8") as f:
            if data and not data.endswith(b"\n"):
                f.write("\n")  # end a torn line so this record stands on its own
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[record["key"]] = record
