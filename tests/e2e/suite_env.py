"""Suite settings for tests that assert what a *healthy* suite serves (no fallback, on topic).

With the defaults the gateway gives ranking at most 1.0 s, exposure 0.5 s, a profiles read 1.0 s
and an impression write 2.0 s, and ranking gives the embeddings call at most 2.0 s and half of
what it has left (≈0.5 s): a busy 2-core machine can pass those and serve a fallback (or, for
profiles, fail the call), which is correct behaviour but not what these tests check.
Here every hop ceiling is generous, so the caller's own deadline (``CALL_TIMEOUT``) is the only
budget: the gateway keeps 0.6 * 0.7 of it for ranking, ranking half of that for embeddings
(≈25 s), far beyond any load. Tests *about* fallback still pass short client deadlines.
"""

from __future__ import annotations

from collections.abc import Mapping

HOP_CEILING_SECONDS = "60"

GENEROUS_ENV: Mapping[str, Mapping[str, str]] = {
    "gateway": {
        "LONGTAIL_GATEWAY_RANKING_TIMEOUT_SECONDS": HOP_CEILING_SECONDS,
        "LONGTAIL_GATEWAY_EXPOSURE_TIMEOUT_SECONDS": HOP_CEILING_SECONDS,
        # Profiles has no fallback: a slow read or write would fail the call outright.
        "LONGTAIL_GATEWAY_PROFILE_TIMEOUT_SECONDS": HOP_CEILING_SECONDS,
        "LONGTAIL_GATEWAY_WRITE_TIMEOUT_SECONDS": HOP_CEILING_SECONDS,
    },
    "ranking": {"LONGTAIL_RANKING_EMBEDDINGS_TIMEOUT_SECONDS": HOP_CEILING_SECONDS},
    # The explore slot and fair_exposure read counters; late ones would count as zero.
    "exposure": {"LONGTAIL_EXPOSURE_PROFILES_TIMEOUT_SECONDS": HOP_CEILING_SECONDS},
}

# The client deadline of calls that expect the healthy answer.
CALL_TIMEOUT = 120.0
# A generous bound for services to listen and report SERVING on a loaded machine.
START_TIMEOUT = 300.0
