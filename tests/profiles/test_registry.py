"""The model registry through ProfilesService on SQLite and PostgreSQL: publish, active version,
history with who/when/why, rollback, and refusals."""

from __future__ import annotations

import grpc
import pytest

from longtail.profiles.v1 import profiles_service_pb2 as pb
from services.common.errors import error_info
from tests.profiles.conftest import Served

KIND = "collaborative"
SHA = "a" * 64


async def _publish(served: Served, version: str, by: str = "ci", why: str = "nightly") -> None:
    await served.stub.PublishModel(
        pb.PublishModelRequest(
            model_kind=KIND, version=version, manifest_sha256=SHA, published_by=by, reason=why
        )
    )


async def _active(served: Served, kind: str = KIND) -> str:
    answer = await served.stub.GetActiveModel(pb.GetActiveModelRequest(model_kind=kind))
    return answer.publication.version if answer.HasField("publication") else ""


async def test_publish_get_active_list_and_roll_back(served: Served) -> None:
    assert await _active(served) == ""
    await _publish(served, "als-1")
    await _publish(served, "als-2", by="alice", why="better NDCG")
    await served.stub.PublishModel(
        pb.PublishModelRequest(model_kind="text_encoder", version="minilm-1")
    )
    answer = await served.stub.GetActiveModel(pb.GetActiveModelRequest(model_kind=KIND))
    active = answer.publication
    assert (active.version, active.published_by, active.reason) == ("als-2", "alice", "better NDCG")
    assert active.manifest_sha256 == SHA and not active.rollback
    assert active.published_at.seconds > 0
    assert await _active(served, "text_encoder") == "minilm-1"

    rolled = await served.stub.RollbackModel(
        pb.RollbackModelRequest(model_kind=KIND, published_by="bob", reason="CTR dropped")
    )
    assert rolled.publication.version == "als-1" and rolled.publication.rollback
    assert rolled.publication.manifest_sha256 == SHA  # carried over from the earlier publication
    assert await _active(served) == "als-1"
    # Explicitly forward again; then a version never published is NOT_FOUND.
    await served.stub.RollbackModel(pb.RollbackModelRequest(model_kind=KIND, to_version="als-2"))
    assert await _active(served) == "als-2"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.RollbackModel(
            pb.RollbackModelRequest(model_kind=KIND, to_version="als-9")
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(caught.value)
    assert info is not None and info.reason == "MODEL_VERSION_NOT_PUBLISHED"

    # The history, newest first, page by page.
    seen: list[tuple[str, bool]] = []
    token = ""
    while True:
        page = await served.stub.ListModelPublications(
            pb.ListModelPublicationsRequest(model_kind=KIND, page_size=2, page_token=token)
        )
        seen += [(p.version, p.rollback) for p in page.publications]
        token = page.next_page_token
        if not token:
            break
    assert seen == [("als-2", True), ("als-1", True), ("als-2", False), ("als-1", False)]
    every = await served.stub.ListModelPublications(pb.ListModelPublicationsRequest())
    assert len(every.publications) == 5


async def test_rollback_without_history_is_not_found(served: Served) -> None:
    for request in (
        pb.RollbackModelRequest(model_kind=KIND),
        pb.RollbackModelRequest(model_kind="none_yet", to_version="x"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await served.stub.RollbackModel(request)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    await _publish(served, "only")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.RollbackModel(pb.RollbackModelRequest(model_kind=KIND))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert await _active(served) == "only"


@pytest.mark.parametrize(
    ("method", "request_message", "reason"),
    [
        ("PublishModel", pb.PublishModelRequest(model_kind="", version="v"), "INVALID_MODEL_KIND"),
        (
            "PublishModel",
            pb.PublishModelRequest(model_kind="Bad Kind", version="v"),
            "INVALID_MODEL_KIND",
        ),
        ("PublishModel", pb.PublishModelRequest(model_kind=KIND), "INVALID_MODEL_VERSION"),
        (
            "PublishModel",
            pb.PublishModelRequest(model_kind=KIND, version="../etc"),
            "INVALID_MODEL_VERSION",
        ),
        (
            "PublishModel",
            pb.PublishModelRequest(model_kind=KIND, version="v", manifest_sha256="xyz"),
            "INVALID_MANIFEST_SHA256",
        ),
        (
            "PublishModel",
            pb.PublishModelRequest(model_kind=KIND, version="v", reason="a\x00b"),
            "NUL_CHARACTER",
        ),
        (
            "PublishModel",
            pb.PublishModelRequest(model_kind=KIND, version="v", published_by="x" * 256),
            "TEXT_TOO_LONG",
        ),
        ("GetActiveModel", pb.GetActiveModelRequest(), "INVALID_MODEL_KIND"),
        (
            "ListModelPublications",
            pb.ListModelPublicationsRequest(page_size=1001),
            "INVALID_PAGE_SIZE",
        ),
        (
            "ListModelPublications",
            pb.ListModelPublicationsRequest(page_token="abc"),
            "INVALID_PAGE_TOKEN",
        ),
        (
            "RollbackModel",
            pb.RollbackModelRequest(model_kind=KIND, to_version="a b"),
            "INVALID_MODEL_VERSION",
        ),
    ],
)
async def test_bad_registry_input_is_invalid_argument(
    served: Served, method: str, request_message: object, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(served.stub, method)(request_message)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info is not None and info.reason == reason
    every = await served.stub.ListModelPublications(pb.ListModelPublicationsRequest())
    assert len(every.publications) == 0
