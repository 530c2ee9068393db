"""The LRU cache of normalised text embeddings, so a template seen before costs no text pass."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class TextEmbeddingCache:
    """LRU of normalised text embeddings keyed by (model id, text), bounded in entries."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def get(self, key: tuple[str, str]) -> Any | None:
        """The embedding, marking it recently used; None on a miss."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: tuple[str, str], value: Any) -> None:
        """Store, evicting the least recently used entries beyond the bound."""
        if self.size <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget every embedding."""
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
