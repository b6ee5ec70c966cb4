"""Left padding of token-id rows into one batch, the way every batched forward pass here needs it."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def left_pad(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device | str = "cpu",
    width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token-id ``sequences`` to the longest one, or to ``width`` when given (at least the longest).

    Returns ``input_ids`` and ``attention_mask`` (1 on real tokens) of shape [rows, width], and
    ``position_ids`` counting from 0 at each row's first real token (0 on padding), all on ``device``.
    """
    longest = max((len(seq) for seq in sequences), default=0)
    if width is None:
        width = longest
    elif width < longest:
        raise ValueError(f"left_pad: width {width} is shorter than the longest sequence ({longest})")
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)
