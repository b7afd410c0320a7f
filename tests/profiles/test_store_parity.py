"""Both stores accept and refuse the same input: what PostgreSQL cannot hold is INVALID_ARGUMENT
on SQLite too, decided before the store is touched, and never INTERNAL or UNKNOWN.

PostgreSQL text and jsonb cannot hold NUL characters (SQLite stores them), it enforces the
varchar(255) of the vector model columns (SQLite does not), and protobuf timestamps outside
0001..9999 cannot be converted at all.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import grpc
import pytest

from longtail.common.v1 import common_pb2
from longtail.profiles.v1 import profiles_service_pb2 as pb
from services.common.errors import error_info
from services.profiles.profiles import encode_page_token
from tests.profiles.conftest import Served
from tests.profiles.test_service import impression, interaction, item, seed, stamp, vector_update

NUL = "a\x00b"


def _item_with_vector(name: str) -> common_pb2.Item:
    with_vector = item(20)
    with_vector.vector.CopyFrom(
        common_pb2.ItemVector(values=[1.0, 2.0], model_name=name, model_version="1")
    )
    return with_vector


def _impression(**fields: str) -> common_pb2.Impression:
    message = impression("req-bad", 0, "item-0001")
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def _bad_interaction(**fields: object) -> common_pb2.Interaction:
    message = interaction("u1", "item-0001", 1)
    for name, value in fields.items():
        if name == "occurred_at":
            message.occurred_at.CopyFrom(value)  # type: ignore[arg-type]
        else:
            setattr(message, name, value)
    return message


def _bad_impression_time(seconds: int, nanos: int = 0) -> common_pb2.Impression:
    message = impression("req-bad", 0, "item-0001")
    message.served_at.seconds, message.served_at.nanos = seconds, nanos
    return message


def _items(*items: common_pb2.Item) -> pb.UpsertItemsRequest:
    return pb.UpsertItemsRequest(items=list(items))


def _users(**fields: Any) -> pb.UpsertUsersRequest:
    return pb.UpsertUsersRequest(users=[common_pb2.User(**{"user_id": "u9", **fields})])


Case = tuple[str, str, object]


def _forged_token(genuine: str) -> str:
    """``genuine`` (a ListItems token) with a NUL in its key: tokens are base64 JSON, so anyone
    can forge one; the filter fingerprint is kept so that only the key is wrong."""
    payload = json.loads(base64.urlsafe_b64decode(genuine + "=" * (-len(genuine) % 4)))
    return encode_page_token(payload["k"], NUL, payload["f"])


def _cases(forged_token: str) -> list[Case]:
    late = stamp(0)
    late.seconds = 10**12
    early = stamp(0)
    early.seconds = -(10**12)
    bad_nanos = stamp(0)
    bad_nanos.nanos = 2_000_000_000
    long_name = "m" * 256
    return [
        # ---------------------------------------------------------------- NUL characters
        ("UpsertItems", "NUL_CHARACTER", _items(item(20, item_id=NUL))),
        ("UpsertItems", "NUL_CHARACTER", _items(item(20, title=NUL))),
        ("UpsertItems", "NUL_CHARACTER", _items(item(20, description=NUL))),
        ("UpsertItems", "NUL_CHARACTER", _items(item(20, tags=["ok", NUL]))),
        ("UpsertItems", "NUL_CHARACTER", _items(item(20, categories=[NUL]))),
        ("UpsertItems", "NUL_CHARACTER", _items(item(20, attributes={NUL: "v"}))),
        ("UpsertItems", "NUL_CHARACTER", _items(item(20, attributes={"k": NUL}))),
        ("UpsertItems", "NUL_CHARACTER", _items(item(21), _item_with_vector(NUL))),
        (
            "UpdateItemVectors",
            "NUL_CHARACTER",
            pb.UpdateItemVectorsRequest(updates=[vector_update("item-0001", [1.0], name=NUL)]),
        ),
        (
            "UpdateItemVectors",
            "NUL_CHARACTER",
            pb.UpdateItemVectorsRequest(updates=[vector_update("item-0001", [1.0], version=NUL)]),
        ),
        ("UpsertUsers", "NUL_CHARACTER", _users(user_id=NUL)),
        ("UpsertUsers", "NUL_CHARACTER", _users(interests=NUL)),
        ("UpsertUsers", "NUL_CHARACTER", _users(attributes={NUL: "v"})),
        ("UpsertUsers", "NUL_CHARACTER", _users(attributes={"k": NUL})),
        *(
            (
                "RecordInteractions",
                "NUL_CHARACTER",
                pb.RecordInteractionsRequest(
                    interactions=[interaction("u1", "item-0000", 0), _bad_interaction(**{f: NUL})],
                    create_missing_users=True,
                ),
            )
            for f in ("user_id", "item_id", "idempotency_key", "request_id")
        ),
        *(
            (
                "RecordImpressions",
                "NUL_CHARACTER",
                pb.RecordImpressionsRequest(
                    impressions=[impression("req-bad", 1, "item-0000"), _impression(**{f: NUL})]
                ),
            )
            for f in ("request_id", "user_id", "item_id", "policy_name", "policy_version")
        ),
        ("GetItems", "NUL_CHARACTER", pb.GetItemsRequest(item_ids=["item-0001", NUL])),
        ("GetUserProfile", "NUL_CHARACTER", pb.GetUserProfileRequest(user_id=NUL)),
        ("ListImpressions", "NUL_CHARACTER", pb.ListImpressionsRequest(request_id=NUL)),
        ("GetItemStats", "NUL_CHARACTER", pb.GetItemStatsRequest(item_ids=[NUL])),
        *(
            ("ListItems", "NUL_CHARACTER", pb.ListItemsRequest(**{f: NUL}))  # type: ignore[arg-type]
            for f in (
                "stale_for_model_name",
                "stale_for_model_version",
                "vector_model_name",
                "vector_model_version",
            )
        ),
        ("ListItems", "INVALID_PAGE_TOKEN", pb.ListItemsRequest(page_token=forged_token)),
        # ---------------------------------------------------------------- lengths
        ("UpsertItems", "ID_TOO_LONG", _items(_item_with_vector(long_name))),
        (
            "UpdateItemVectors",
            "ID_TOO_LONG",
            pb.UpdateItemVectorsRequest(
                updates=[vector_update("item-0001", [1.0], version=long_name)]
            ),
        ),
        # ---------------------------------------------------------------- timestamps
        ("UpsertItems", "INVALID_TIMESTAMP", _items(item(20, created_at=late))),
        (
            "RecordInteractions",
            "INVALID_TIMESTAMP",
            pb.RecordInteractionsRequest(interactions=[_bad_interaction(occurred_at=early)]),
        ),
        (
            "RecordInteractions",
            "INVALID_TIMESTAMP",
            pb.RecordInteractionsRequest(interactions=[_bad_interaction(occurred_at=bad_nanos)]),
        ),
        (
            "RecordImpressions",
            "INVALID_TIMESTAMP",
            pb.RecordImpressionsRequest(impressions=[_bad_impression_time(10**12)]),
        ),
    ]


async def test_input_postgresql_cannot_hold_is_invalid_argument_on_every_store(
    served: Served,
) -> None:
    await seed(served)
    before = await served.stub.GetCatalogStats(pb.GetCatalogStatsRequest())
    forged = _forged_token(
        (await served.stub.ListItems(pb.ListItemsRequest(page_size=1))).next_page_token
    )
    for method, reason, request in _cases(forged):
        call: Any = getattr(served.stub, method)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (
            method,
            reason,
            caught.value.details(),
        )
        info = error_info(caught.value)
        assert info is not None and info.reason == reason, (method, reason, info)
    # Nothing of it reached the store.
    after = await served.stub.GetCatalogStats(pb.GetCatalogStatsRequest())
    counts = ("item_count", "user_count", "interaction_count", "impression_count")
    assert [getattr(after, c) for c in counts] == [getattr(before, c) for c in counts]
    vectors = await served.stub.ListItems(pb.ListItemsRequest(vector_model_name="minilm"))
    assert list(vectors.items) == []
    logged = await served.stub.ListImpressions(pb.ListImpressionsRequest(request_id="req-bad"))
    assert list(logged.impressions) == []
