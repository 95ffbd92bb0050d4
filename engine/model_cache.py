"""Loaded models kept for reuse, all with one lifetime.

A `ModelCache` keeps models by key. An entry is loaded by the first `ModelCache.get` of its key and
lives until the cache is full and another key is loaded (the oldest entry goes first, and its
memory is given back before the new one loads, so two large models are never held at once) or
until `ModelCache.clear`. `release_models` clears every cache of the process: the benchmarks call
it between measurements.

The engine's caches: the base model that generation samples from (`engine.generate`, one at a
time), the face kits (`engine.identity`, one per licence mode and asset folder) and the
restoration and upscaling networks (`engine.postprocess`, two).
"""

from __future__ import annotations

import gc
import sys
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_CACHES: weakref.WeakSet[ModelCache] = weakref.WeakSet()


class ModelCache(Generic[K, V]):
    """Models by key, at most ``capacity`` of them (None: no limit); safe to share between threads."""

    def __init__(self, capacity: int | None = None) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"A model cache holds at least one model (got capacity {capacity}).")
        self.capacity = capacity
        self.lock = threading.RLock()
        """Held while an entry loads; hold it too while using an entry that must not change meanwhile."""
        self._entries: dict[K, V] = {}
        _CACHES.add(self)

    def get(self, key: K, load: Callable[[], V]) -> V:
        """The entry of ``key``, loaded by ``load()`` if missing (after evicting the oldest one when full)."""
        with self.lock:
            if key in self._entries:
                return self._entries[key]
            if self.capacity is not None and len(self._entries) >= self.capacity:
                while len(self._entries) >= self.capacity:
                    self._entries.pop(next(iter(self._entries)))
                _free_memory()
            value = load()
            self._entries[key] = value
            return value

    def peek(self, key: K) -> V | None:
        """The entry of ``key`` if it is loaded; never loads it."""
        with self.lock:
            return self._entries.get(key)

    def values(self) -> list[V]:
        """The loaded entries, oldest first."""
        with self.lock:
            return list(self._entries.values())

    def clear(self) -> None:
        """Drop every entry and give its memory back (once nothing else holds it)."""
        with self.lock:
            self._entries.clear()
        _free_memory()


def release_models() -> None:
    """Clear every model cache of the process."""
    for cache in list(_CACHES):
        cache.clear()


def _free_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
