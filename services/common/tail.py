"""The long-tail definitions, in one place for every service, job and metric.

- head = the top 20% of catalogue items by interaction count in the training window;
- tail = the rest, including cold items (zero interactions).
Ties at the boundary are broken by item id so that the split is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

HEAD_SHARE = 0.2


def head_size(catalogue_size: int, head_share: float = HEAD_SHARE) -> int:
    """How many items are head in a catalogue of this size (ceil of the share)."""
    return math.ceil(catalogue_size * head_share)


def head_items(
    counts: Mapping[str, int],
    catalogue: Iterable[str] | None = None,
    head_share: float = HEAD_SHARE,
) -> frozenset[str]:
    """The head: the top ``head_share`` of the catalogue by interaction count.

    ``catalogue`` lists every item (items missing from ``counts`` have zero interactions); by
    default the keys of ``counts``. Items with zero interactions are never head, even when fewer
    than 20% of the catalogue has any.
    """
    items = list(counts) if catalogue is None else list(set(catalogue) | set(counts))
    ranked = sorted(
        (item for item in items if counts.get(item, 0) > 0),
        key=lambda item: (-counts[item], item),
    )
    return frozenset(ranked[: head_size(len(items), head_share)])


def is_cold(item_id: str, counts: Mapping[str, int]) -> bool:
    return counts.get(item_id, 0) == 0
