"""The KV cache of the transformers engine: a ``DynamicCache`` whose layers write into buffers
allocated once per batch.

``DynamicLayer.update`` concatenates the whole cache at every decoding step (quadratic copying, the
largest cost of decoding on CPU); :class:`GrowingLayer` keeps the same semantics without it.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def new_cache(model_config: Any, capacity: int = 0) -> DynamicCache:
    """A ``DynamicCache`` for a model; with ``capacity``, its full-attention layers are
    :class:`GrowingLayer` s preallocated for that many positions.

    Models with other layer kinds (sliding windows, linear attention) keep their own layers.
    """
    cache = DynamicCache(config=model_config)
    if capacity and cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [GrowingLayer(capacity) for _ in cache.layers]
    return cache


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values live in buffers allocated once per batch.

    ``keys``/``values`` are views of the first ``length`` positions, so everything that reads
    a DynamicLayer (masks, sequence length) works unchanged; ``update`` copies only the new
    positions. Selecting batch rows (sample expansion, dropping finished rows) re-indexes the
    buffers.
    """

    def __init__(self, capacity: int) -> None:
        """A layer for at most ``capacity`` positions (it grows, by copying, if ever asked for more)."""
        super().__init__()
        self.capacity = max(int(capacity), 1)
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        batch, heads = key_states.shape[:2]
        self.key_buffer = key_states.new_empty((batch, heads, self.capacity, key_states.shape[-1]))
        self.value_buffer = value_states.new_empty(
            (batch, value_states.shape[1], self.capacity, value_states.shape[-1])
        )
        self.length = 0
        self._refresh()
        self.is_initialized = True

    def _refresh(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:  # not expected (capacity is prompt + max_new_tokens), but stay correct
            self.capacity = max(end, 2 * self.capacity)
            key_buffer = self.key_buffer.new_empty(
                (*self.key_buffer.shape[:2], self.capacity, self.key_buffer.shape[-1])
            )
            value_buffer = self.value_buffer.new_empty(
                (*self.value_buffer.shape[:2], self.capacity, self.value_buffer.shape[-1])
            )
            key_buffer[:, :, : self.length] = self.key_buffer[:, :, : self.length]
            value_buffer[:, :, : self.length] = self.value_buffer[:, :, : self.length]
            self.key_buffer, self.value_buffer = key_buffer, value_buffer
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._refresh()
        return self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.key_buffer = self.key_buffer.index_select(0, indices.to(self.key_buffer.device))
            self.value_buffer = self.value_buffer.index_select(0, indices.to(self.value_buffer.device))
            self._refresh()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
            self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
            self._refresh()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0 and self.is_initialized:
            self.length = max(self.length + tokens_to_remove, 0)
            self._refresh()

    def reset(self) -> None:
        self.length = 0
        if self.is_initialized:
            self._refresh()
