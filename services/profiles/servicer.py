"""ProfilesService over gRPC: translates proto messages to domain records and back, nothing else."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
from google.protobuf import timestamp_pb2

from longtail.common.v1 import common_pb2
from longtail.profiles.v1 import profiles_service_pb2 as pb
from longtail.profiles.v1 import profiles_service_pb2_grpc
from services.common.errors import InvalidArgument
from services.profiles import records
from services.profiles.profiles import Profiles
from services.profiles.registry import ModelRegistry, Publication

# Enum numbers to stored names; numbers not listed (UNSPECIFIED, unknown) become a name the
# domain rejects with INVALID_INTERACTION_KIND / INVALID_REASON.
_KIND_NAMES = {
    common_pb2.INTERACTION_KIND_VIEW: "view",
    common_pb2.INTERACTION_KIND_CLICK: "click",
    common_pb2.INTERACTION_KIND_PURCHASE: "purchase",
    common_pb2.INTERACTION_KIND_RATING: "rating",
}
_KIND_NUMBERS = {name: number for number, name in _KIND_NAMES.items()}
_REASON_NAMES = {
    common_pb2.REASON_RELEVANCE: "relevance",
    common_pb2.REASON_TAIL_BOOST: "tail_boost",
    common_pb2.REASON_EXPLORE: "explore",
    common_pb2.REASON_DIVERSITY: "diversity",
    common_pb2.REASON_FALLBACK: "fallback",
}
_REASON_NUMBERS = {name: number for number, name in _REASON_NAMES.items()}
_UNKNOWN = "unspecified"

ServicerContext = Any  # grpc.aio.ServicerContext (grpc ships no type information)


def _time_in(message: Any, field: str) -> dt.datetime | None:
    if not message.HasField(field):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, field)
    try:
        return stamp.ToDatetime(tzinfo=dt.UTC)
    except ValueError as error:  # outside 0001..9999 or bad nanos: bad input, not UNKNOWN
        raise InvalidArgument(
            "INVALID_TIMESTAMP", f"{field} is not a valid timestamp: {error}", field=field
        ) from error


def _time_out(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _vector_in(vector: common_pb2.ItemVector) -> records.ItemVector:
    return records.ItemVector(
        values=np.asarray(vector.values, dtype=np.float32),
        model_name=vector.model_name,
        model_version=vector.model_version,
    )


def _item_in(item: common_pb2.Item) -> records.ItemRecord:
    return records.ItemRecord(
        item_id=item.item_id,
        title=item.title,
        description=item.description,
        tags=list(item.tags),
        categories=list(item.categories),
        attributes=dict(item.attributes),
        created_at=_time_in(item, "created_at"),
        vector=_vector_in(item.vector) if item.HasField("vector") else None,
    )


def _item_out(item: records.ItemRecord) -> common_pb2.Item:
    message = common_pb2.Item(
        item_id=item.item_id,
        title=item.title,
        description=item.description,
        tags=item.tags,
        categories=item.categories,
        attributes=item.attributes,
        created_at=_time_out(item.created_at),
    )
    if item.vector is not None:
        message.vector.values.extend(item.vector.values.tolist())
        message.vector.model_name = item.vector.model_name
        message.vector.model_version = item.vector.model_version
    return message


def _interaction_in(interaction: common_pb2.Interaction) -> records.InteractionRecord:
    return records.InteractionRecord(
        user_id=interaction.user_id,
        item_id=interaction.item_id,
        kind=_KIND_NAMES.get(interaction.kind, _UNKNOWN),
        value=interaction.value,
        occurred_at=_time_in(interaction, "occurred_at"),
        idempotency_key=interaction.idempotency_key,
        request_id=interaction.request_id,
    )


def _interaction_out(record: records.InteractionRecord) -> common_pb2.Interaction:
    return common_pb2.Interaction(
        user_id=record.user_id,
        item_id=record.item_id,
        kind=_KIND_NUMBERS.get(record.kind, common_pb2.INTERACTION_KIND_UNSPECIFIED),
        value=record.value,
        occurred_at=_time_out(record.occurred_at),
        idempotency_key=record.idempotency_key,
        request_id=record.request_id,
    )


def _impression_in(impression: common_pb2.Impression) -> records.ImpressionRecord:
    return records.ImpressionRecord(
        request_id=impression.request_id,
        position=impression.position,
        user_id=impression.user_id,
        item_id=impression.item_id,
        reason=_REASON_NAMES.get(impression.reason, _UNKNOWN),
        policy_name=impression.policy_name,
        policy_version=impression.policy_version,
        score=impression.score,
        served_at=_time_in(impression, "served_at"),
    )


def _impression_out(record: records.ImpressionRecord) -> common_pb2.Impression:
    return common_pb2.Impression(
        request_id=record.request_id,
        position=record.position,
        user_id=record.user_id,
        item_id=record.item_id,
        policy_name=record.policy_name,
        policy_version=record.policy_version,
        reason=_REASON_NUMBERS.get(record.reason, common_pb2.REASON_UNSPECIFIED),
        score=record.score,
        served_at=_time_out(record.served_at),
    )


def _profile_out(profile: records.UserProfile) -> pb.UserProfile:
    return pb.UserProfile(
        user_id=profile.user_id,
        interests=profile.interests,
        history=[
            common_pb2.HistoryEntry(
                item_id=entry.item_id,
                kind=_KIND_NUMBERS.get(entry.kind, common_pb2.INTERACTION_KIND_UNSPECIFIED),
                value=entry.value,
                occurred_at=_time_out(entry.occurred_at),
            )
            for entry in profile.history
        ],
        tail_propensity=profile.tail_propensity,
        category_mix=profile.category_mix,
        interaction_count=profile.interaction_count,
        seen_item_ids=profile.seen_item_ids,
    )


def _stats_out(stats: records.ItemStats) -> common_pb2.ItemStats:
    return common_pb2.ItemStats(
        item_id=stats.item_id,
        interaction_count=stats.interaction_count,
        impression_count=stats.impression_count,
        feedback_count=stats.feedback_count,
        is_tail=stats.is_tail,
        is_cold=stats.is_cold,
    )


def _publication_out(publication: Publication) -> pb.ModelPublication:
    return pb.ModelPublication(
        publication_id=publication.publication_id,
        model_kind=publication.model_kind,
        version=publication.version,
        manifest_sha256=publication.manifest_sha256,
        published_by=publication.published_by,
        reason=publication.reason,
        published_at=_time_out(publication.published_at),
        rollback=publication.rollback,
    )


class ProfilesServicer(profiles_service_pb2_grpc.ProfilesServiceServicer):
    def __init__(self, profiles: Profiles, registry: ModelRegistry | None = None) -> None:
        self._profiles = profiles
        self._registry = registry or ModelRegistry(profiles.database)

    async def UpsertItems(
        self, request: pb.UpsertItemsRequest, context: ServicerContext
    ) -> pb.UpsertItemsResponse:
        count = await self._profiles.upsert_items([_item_in(item) for item in request.items])
        return pb.UpsertItemsResponse(upserted_count=count)

    async def GetItems(
        self, request: pb.GetItemsRequest, context: ServicerContext
    ) -> pb.GetItemsResponse:
        items, missing = await self._profiles.get_items(
            list(request.item_ids), request.include_vectors
        )
        return pb.GetItemsResponse(
            items=[_item_out(item) for item in items], missing_item_ids=missing
        )

    async def ListItems(
        self, request: pb.ListItemsRequest, context: ServicerContext
    ) -> pb.ListItemsResponse:
        filters = records.ItemFilter(
            stale_for_model_name=request.stale_for_model_name,
            stale_for_model_version=request.stale_for_model_version,
            vector_model_name=request.vector_model_name,
            vector_model_version=request.vector_model_version,
        )
        page = await self._profiles.list_items(
            request.page_size, request.page_token, filters, request.include_vectors
        )
        return pb.ListItemsResponse(
            items=[_item_out(item) for item in page.entries],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    async def UpdateItemVectors(
        self, request: pb.UpdateItemVectorsRequest, context: ServicerContext
    ) -> pb.UpdateItemVectorsResponse:
        updates = [
            records.VectorUpdate(update.item_id, _vector_in(update.vector))
            for update in request.updates
        ]
        count = await self._profiles.update_item_vectors(updates)
        return pb.UpdateItemVectorsResponse(updated_count=count)

    async def UpsertUsers(
        self, request: pb.UpsertUsersRequest, context: ServicerContext
    ) -> pb.UpsertUsersResponse:
        users = [
            records.UserRecord(user.user_id, user.interests, dict(user.attributes))
            for user in request.users
        ]
        return pb.UpsertUsersResponse(upserted_count=await self._profiles.upsert_users(users))

    async def GetUserProfile(
        self, request: pb.GetUserProfileRequest, context: ServicerContext
    ) -> pb.GetUserProfileResponse:
        found = await self._profiles.read_profile(
            request.user_id,
            request.history_limit,
            request.served_request_id,
            request.if_profile_version_differs,
        )
        return pb.GetUserProfileResponse(
            profile=None if found.profile is None else _profile_out(found.profile),
            served=[_impression_out(record) for record in found.served],
            profile_version=found.version,
            unchanged=found.unchanged,
        )

    async def RecordInteractions(
        self, request: pb.RecordInteractionsRequest, context: ServicerContext
    ) -> pb.RecordInteractionsResponse:
        result = await self._profiles.record_interactions(
            [_interaction_in(interaction) for interaction in request.interactions],
            request.create_missing_users,
        )
        return pb.RecordInteractionsResponse(
            recorded_count=result.recorded, duplicate_count=result.duplicates
        )

    async def ListInteractions(
        self, request: pb.ListInteractionsRequest, context: ServicerContext
    ) -> pb.ListInteractionsResponse:
        page = await self._profiles.list_interactions(request.page_size, request.page_token)
        return pb.ListInteractionsResponse(
            interactions=[_interaction_out(record) for record in page.entries],
            next_page_token=page.next_page_token,
        )

    async def RecordImpressions(
        self, request: pb.RecordImpressionsRequest, context: ServicerContext
    ) -> pb.RecordImpressionsResponse:
        result = await self._profiles.record_impressions(
            [_impression_in(impression) for impression in request.impressions],
            if_profile_version=request.if_profile_version,
        )
        return pb.RecordImpressionsResponse(
            recorded_count=result.recorded, duplicate_count=result.duplicates
        )

    async def ListImpressions(
        self, request: pb.ListImpressionsRequest, context: ServicerContext
    ) -> pb.ListImpressionsResponse:
        impressions = await self._profiles.list_impressions(request.request_id)
        return pb.ListImpressionsResponse(
            impressions=[_impression_out(record) for record in impressions]
        )

    async def GetItemStats(
        self, request: pb.GetItemStatsRequest, context: ServicerContext
    ) -> pb.GetItemStatsResponse:
        stats = await self._profiles.get_item_stats(list(request.item_ids))
        return pb.GetItemStatsResponse(stats=[_stats_out(entry) for entry in stats])

    async def ListItemStats(
        self, request: pb.ListItemStatsRequest, context: ServicerContext
    ) -> pb.ListItemStatsResponse:
        page = await self._profiles.list_item_stats(
            request.page_size,
            request.page_token,
            request.if_popularity_version_differs,
            exposure_changed_since=_time_in(request, "exposure_changed_since"),
        )
        return pb.ListItemStatsResponse(
            stats=[_stats_out(entry) for entry in page.entries],
            next_page_token=page.next_page_token,
            popularity_version=page.popularity_version,
            unchanged=page.unchanged,
            exposure_read_at=_time_out(page.exposure_read_at),
        )

    async def GetCatalogStats(
        self, request: pb.GetCatalogStatsRequest, context: ServicerContext
    ) -> pb.GetCatalogStatsResponse:
        stats = await self._profiles.catalog_stats()
        return pb.GetCatalogStatsResponse(
            item_count=stats.item_count,
            user_count=stats.user_count,
            interaction_count=stats.interaction_count,
            impression_count=stats.impression_count,
            head_item_count=stats.head_item_count,
            cold_item_count=stats.cold_item_count,
            head_min_interactions=stats.head_min_interactions,
            computed_at=_time_out(stats.computed_at),
        )

    # ---- the model registry (services/profiles/registry.py)

    async def PublishModel(
        self, request: pb.PublishModelRequest, context: ServicerContext
    ) -> pb.PublishModelResponse:
        publication = await self._registry.publish(
            request.model_kind,
            request.version,
            request.manifest_sha256,
            request.published_by,
            request.reason,
        )
        return pb.PublishModelResponse(publication=_publication_out(publication))

    async def GetActiveModel(
        self, request: pb.GetActiveModelRequest, context: ServicerContext
    ) -> pb.GetActiveModelResponse:
        publication = await self._registry.active(request.model_kind)
        if publication is None:
            return pb.GetActiveModelResponse()
        return pb.GetActiveModelResponse(publication=_publication_out(publication))

    async def ListModelPublications(
        self, request: pb.ListModelPublicationsRequest, context: ServicerContext
    ) -> pb.ListModelPublicationsResponse:
        page = await self._registry.history(
            request.model_kind, request.page_size, request.page_token
        )
        return pb.ListModelPublicationsResponse(
            publications=[_publication_out(p) for p in page.entries],
            next_page_token=page.next_page_token,
        )

    async def RollbackModel(
        self, request: pb.RollbackModelRequest, context: ServicerContext
    ) -> pb.RollbackModelResponse:
        publication = await self._registry.rollback(
            request.model_kind, request.to_version, request.published_by, request.reason
        )
        return pb.RollbackModelResponse(publication=_publication_out(publication))
