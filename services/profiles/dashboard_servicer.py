"""The dashboard RPCs of ProfilesService: proto ⇄ ``dashboard_queries`` records, nothing else.

A subclass of ``ProfilesServicer`` so that the store's own RPCs and these read-only aggregates
stay in separate files; ``app.build`` serves this one.
"""

from __future__ import annotations

from longtail.profiles.v1 import profiles_service_pb2 as pb
from services.profiles import dashboard_queries as dq
from services.profiles.dashboard_queries import DashboardQueries
from services.profiles.profiles import Profiles
from services.profiles.servicer import (
    ProfilesServicer,
    ServicerContext,
    _impression_out,
    _interaction_out,
    _time_in,
    _time_out,
)


def _window_in(window: pb.ServedWindow) -> dq.Window:
    return dq.Window(start=_time_in(window, "start_time"), end=_time_in(window, "end_time"))


def _gap_out(gap: dq.ExposureGap) -> pb.ExposureGap:
    return pb.ExposureGap(
        item_id=gap.item_id,
        title=gap.title,
        impression_count=gap.impressions,
        impression_share=gap.impression_share,
        merit_share=gap.merit_share,
        gap=gap.gap,
        is_tail=gap.is_tail,
        is_cold=gap.is_cold,
    )


class ProfilesWithDashboardServicer(ProfilesServicer):
    def __init__(self, profiles: Profiles, dashboard: DashboardQueries) -> None:
        super().__init__(profiles)
        self._dashboard = dashboard

    async def GetExposureSummary(
        self, request: pb.GetExposureSummaryRequest, context: ServicerContext
    ) -> pb.GetExposureSummaryResponse:
        summary = await self._dashboard.exposure_summary(
            _window_in(request.window), request.bucket_count, request.lorenz_point_count
        )
        return pb.GetExposureSummaryResponse(
            window=pb.ServedWindow(
                start_time=_time_out(summary.start), end_time=_time_out(summary.end)
            ),
            bucket_seconds=summary.bucket_seconds,
            buckets=[
                pb.ExposureBucket(
                    start_time=_time_out(bucket.start),
                    impression_count=bucket.impressions,
                    tail_impression_count=bucket.tail_impressions,
                    cold_impression_count=bucket.cold_impressions,
                    distinct_item_count=bucket.distinct_items,
                )
                for bucket in summary.buckets
            ],
            impression_count=summary.impressions,
            list_count=summary.lists,
            tail_impression_count=summary.tail_impressions,
            cold_impression_count=summary.cold_impressions,
            distinct_item_count=summary.distinct_items,
            catalogue_size=summary.catalogue_size,
            head_item_count=summary.head_items,
            cold_item_count=summary.cold_items,
            exposure_gini=summary.gini,
            lorenz_curve=[
                pb.LorenzPoint(item_share=x, impression_share=y) for x, y in summary.lorenz
            ],
        )

    async def ListPolicyOutcomes(
        self, request: pb.ListPolicyOutcomesRequest, context: ServicerContext
    ) -> pb.ListPolicyOutcomesResponse:
        outcomes = await self._dashboard.policy_outcomes(_window_in(request.window))
        return pb.ListPolicyOutcomesResponse(
            outcomes=[
                pb.PolicyOutcome(
                    policy_name=o.policy_name,
                    policy_version=o.policy_version,
                    list_count=o.lists,
                    head_impression_count=o.head_impressions,
                    tail_impression_count=o.tail_impressions,
                    cold_impression_count=o.cold_impressions,
                    head_click_count=o.head_clicks,
                    tail_click_count=o.tail_clicks,
                    cold_click_count=o.cold_clicks,
                )
                for o in outcomes
            ]
        )

    async def ListExposureGaps(
        self, request: pb.ListExposureGapsRequest, context: ServicerContext
    ) -> pb.ListExposureGapsResponse:
        gaps = await self._dashboard.exposure_gaps(_window_in(request.window), request.limit)
        return pb.ListExposureGapsResponse(
            over_exposed=[_gap_out(gap) for gap in gaps.over_exposed],
            under_exposed=[_gap_out(gap) for gap in gaps.under_exposed],
            served_item_count=gaps.served_items,
        )

    async def ListServedRequests(
        self, request: pb.ListServedRequestsRequest, context: ServicerContext
    ) -> pb.ListServedRequestsResponse:
        page = await self._dashboard.served_requests(
            _window_in(request.window), request.page_size, request.page_token
        )
        return pb.ListServedRequestsResponse(
            requests=[
                pb.ServedRequestSummary(
                    request_id=entry.request_id,
                    user_id=entry.user_id,
                    policy_name=entry.policy_name,
                    policy_version=entry.policy_version,
                    served_at=_time_out(entry.served_at),
                )
                for entry in page.requests
            ],
            next_page_token=page.next_page_token,
        )

    async def GetServedRequest(
        self, request: pb.GetServedRequestRequest, context: ServicerContext
    ) -> pb.GetServedRequestResponse:
        served = await self._dashboard.served_request(request.request_id)
        return pb.GetServedRequestResponse(
            items=[
                pb.ServedItem(
                    impression=_impression_out(item.impression),
                    title=item.title,
                    is_tail=item.is_tail,
                    is_cold=item.is_cold,
                    interaction_count=item.interaction_count,
                )
                for item in served.items
            ],
            feedback=[_interaction_out(record) for record in served.feedback],
        )
