"""Embedding the catalogue: item text -> embeddings service (Triton) -> item vectors in profiles.

``item_text`` is THE definition of what the encoder reads for an item; everything that embeds
items (this job, benchmarks, evaluations) calls it.

``index_catalogue`` embeds every item whose vector is missing or comes from another model or
version than the one the embeddings service serves now, and writes the vectors back in batches.
It is resumable by construction: it only ever asks profiles for *stale* items, so a rerun after a
crash skips what earlier runs wrote, and a rerun after a model change re-embeds everything.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypedDict

from longtail.common.v1 import common_pb2
from longtail.embeddings.v1 import embeddings_service_pb2 as embeddings_pb
from longtail.profiles.v1 import profiles_service_pb2 as profiles_pb

# What the embeddings service accepts per text (its proto says so); longer would be rejected and
# the encoder reads only the first 256 word pieces anyway.
MAX_TEXT_CHARS = 8192
# Profiles accepts at most 1000 entries per call; embeddings at most 1024 texts.
MAX_BATCH_SIZE = 1000


def item_text(item: common_pb2.Item, max_chars: int = MAX_TEXT_CHARS) -> str:
    """Title, description, categories and tags, one per line, empty parts left out.

    e.g. ``"Toy Story (1995)\\nCategories: Adventure, Animation\\nTags: pixar"``. Cut at
    ``max_chars`` characters. An item without any text gives "" (the zero vector).
    """
    parts = [item.title.strip(), item.description.strip()]
    categories = [c.strip() for c in item.categories if c.strip()]
    tags = [t.strip() for t in item.tags if t.strip()]
    if categories:
        parts.append("Categories: " + ", ".join(categories))
    if tags:
        parts.append("Tags: " + ", ".join(tags))
    return "\n".join(part for part in parts if part)[:max_chars]


class IndexResult(TypedDict):
    embedded: int  # items embedded and written by this run
    skipped: int  # items already holding a vector of this model and version
    batches: int
    model_name: str
    model_version: str


async def index_catalogue(
    profiles_stub: Any,
    embeddings_stub: Any,
    batch_size: int = 256,
    progress: bool = True,
    timeout_seconds: float = 120.0,
) -> IndexResult:
    """Embed every stale item through the embeddings service and store the vectors in profiles.

    ``profiles_stub`` / ``embeddings_stub`` are the generated asyncio stubs
    (``ProfilesServiceStub(channel)``, ``EmbeddingsServiceStub(channel)``). Writing a batch
    overlaps with listing and embedding the next one. Raises ``grpc.aio.AioRpcError`` when a
    service fails (a rerun continues where this one stopped).
    """
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be in 1..{MAX_BATCH_SIZE}")
    info = await embeddings_stub.GetModelInfo(
        embeddings_pb.GetModelInfoRequest(), timeout=timeout_seconds
    )
    max_chars = info.max_text_chars or MAX_TEXT_CHARS
    batch_size = min(batch_size, info.max_texts_per_request or batch_size)
    stale_filter = {
        "stale_for_model_name": info.model_name,
        "stale_for_model_version": info.model_version,
    }
    everything = await profiles_stub.ListItems(
        profiles_pb.ListItemsRequest(page_size=1), timeout=timeout_seconds
    )
    first = await profiles_stub.ListItems(
        profiles_pb.ListItemsRequest(page_size=batch_size, **stale_filter), timeout=timeout_seconds
    )
    stale_total = int(first.total_size)
    result = IndexResult(
        embedded=0,
        skipped=max(0, int(everything.total_size) - stale_total),
        batches=0,
        model_name=info.model_name,
        model_version=info.model_version,
    )
    bar = _progress_bar(stale_total, progress)

    async def write(items: list[common_pb2.Item], response: Any) -> None:
        updates = [
            profiles_pb.ItemVectorUpdate(
                item_id=item.item_id,
                vector=common_pb2.ItemVector(
                    values=embedding.values,
                    model_name=response.model_name,
                    model_version=response.model_version,
                ),
            )
            for item, embedding in zip(items, response.embeddings, strict=True)
        ]
        await profiles_stub.UpdateItemVectors(
            profiles_pb.UpdateItemVectorsRequest(updates=updates), timeout=timeout_seconds
        )
        result["embedded"] += len(updates)
        result["batches"] += 1
        result["model_name"], result["model_version"] = response.model_name, response.model_version
        if bar is not None:
            bar.update(len(updates))

    page = first
    pending: asyncio.Task[None] | None = None
    try:
        while page.items:
            items = list(page.items)
            response = await embeddings_stub.EmbedTexts(
                embeddings_pb.EmbedTextsRequest(texts=[item_text(i, max_chars) for i in items]),
                timeout=timeout_seconds,
            )
            if pending is not None:
                await pending
            pending = asyncio.create_task(write(items, response))
            if not page.next_page_token:
                break
            # Keyset paging past the items just embedded; items written meanwhile drop out of
            # the stale set, which is what a rerun relies on.
            page = await profiles_stub.ListItems(
                profiles_pb.ListItemsRequest(
                    page_size=batch_size, page_token=page.next_page_token, **stale_filter
                ),
                timeout=timeout_seconds,
            )
        if pending is not None:
            await pending
            pending = None
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
        if bar is not None:
            bar.close()
    return result


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="item", desc="indexing", leave=False)
