"""The dashboard's HTML, rendered on the server from the services' answers (no script).

Every figure an operator reads sits in an element with a ``data-figure`` name (and, in the
per-policy table, a row ``data-policy="name@version"``), so that tests and scrapers can find it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from html import escape
from urllib.parse import quote, urlencode

from longtail.common.v1 import common_pb2
from longtail.profiles.v1 import profiles_service_pb2 as ppb
from services.dashboard import charts
from services.dashboard.source import Configuration, Overview

PRESETS = (("1h", "last hour"), ("24h", "last 24 hours"), ("7d", "last 7 days"), ("30d", "30 days"))
_REASONS = {
    common_pb2.REASON_RELEVANCE: "relevance",
    common_pb2.REASON_TAIL_BOOST: "tail boost",
    common_pb2.REASON_EXPLORE: "explore",
    common_pb2.REASON_DIVERSITY: "diversity",
    common_pb2.REASON_FALLBACK: "fallback",
}
_KINDS = {
    common_pb2.INTERACTION_KIND_VIEW: "view",
    common_pb2.INTERACTION_KIND_CLICK: "click",
    common_pb2.INTERACTION_KIND_PURCHASE: "purchase",
    common_pb2.INTERACTION_KIND_RATING: "rating",
}

_STYLE = """
:root { color-scheme: light; --ink: #1d2330; --muted: #5b6474; --line: #e3e6ec; --tail: #0072B2;
  --cold: #E69F00; --head: #777; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, sans-serif; color: var(--ink); background: #f6f7f9; }
header { background: #1d2330; color: #fff; padding: 12px 24px; display: flex; flex-wrap: wrap;
  gap: 12px 24px; align-items: baseline; }
header h1 { font-size: 18px; margin: 0; }
header a { color: #cfe3ff; }
main { padding: 16px 24px 48px; max-width: 1280px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 12px 16px;
  margin: 0 0 16px; }
h2 { font-size: 16px; margin: 0 0 8px; }
.note { color: var(--muted); font-size: 12px; margin: 4px 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 8px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
.card .label { color: var(--muted); font-size: 12px; }
.card .value { font-size: 22px; font-weight: 600; }
.row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); }
td.num, th.num { text-align: right; white-space: nowrap; }
td:first-child { white-space: nowrap; }
.tag { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 12px; color: #fff; }
.tag.head { background: var(--head); } .tag.tail { background: var(--tail); }
.tag.cold { background: var(--cold); color: #000; }
form.inline { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin: 0; }
input { font: inherit; padding: 3px 6px; }
.problem { color: #9b1c1c; }
.error { border-color: #e0a3a3; background: #fff5f5; }
"""


@dataclasses.dataclass(frozen=True)
class WindowView:
    """The window a page shows, as the operator chose it."""

    start: dt.datetime | None  # None: from the first impression
    end: dt.datetime
    label: str


def _time(moment: dt.datetime | None) -> str:
    if moment is None:
        return "the first impression"
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _short_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%m-%d %H:%M")


def _input_time(moment: dt.datetime | None) -> str:
    return "" if moment is None else moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M")


def _count(value: int) -> str:
    return f"{value:,}"


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "—"


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _stamp(value: object) -> dt.datetime:
    return value.ToDatetime(tzinfo=dt.UTC)  # type: ignore[attr-defined, no-any-return]


def _class_tag(is_tail: bool, is_cold: bool) -> str:
    if is_cold:
        return '<span class="tag cold">cold</span>'
    return '<span class="tag tail">tail</span>' if is_tail else '<span class="tag head">head</span>'


def _request_link(request_id: str) -> str:
    return f'<a href="/requests/{quote(request_id, safe="")}">{escape(request_id)}</a>'


def _document(title: str, header_extra: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No favicon request (a 404 would be the page's only failed load).
        '<link rel="icon" href="data:,">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f'<header><h1><a href="/" style="color:inherit;text-decoration:none">Longtail exposure'
        f"</a></h1>{header_extra}</header><main>{body}</main></body></html>"
    )


def _window_form(window: WindowView) -> str:
    presets = " · ".join(
        f'<a href="/?{urlencode({"last": key})}">{escape(text)}</a>' for key, text in PRESETS
    )
    return (
        f'<nav aria-label="window">{presets} · <a href="/?last=all">all</a></nav>'
        '<form class="inline" method="get" action="/">'
        f'<label>from <input type="datetime-local" name="from" value="{_input_time(window.start)}">'
        f'</label><label>to <input type="datetime-local" name="to" '
        f'value="{_input_time(window.end)}"></label><span>UTC</span>'
        '<button type="submit">show</button></form>'
    )


def _card(label: str, figure: str, value: str, note: str = "") -> str:
    extra = f'<div class="note">{escape(note)}</div>' if note else ""
    return (
        f'<div class="card"><div class="label">{escape(label)}</div>'
        f'<div class="value" data-figure="{figure}">{escape(value)}</div>{extra}</div>'
    )


def _summary(summary: ppb.GetExposureSummaryResponse, window: WindowView) -> str:
    impressions = summary.impression_count
    cards = "".join(
        (
            _card("Impressions", "impressions", _count(impressions)),
            _card("Lists served", "lists", _count(summary.list_count)),
            _card(
                "Tail share",
                "tail-share",
                _share(summary.tail_impression_count, impressions),
                f"{_count(summary.tail_impression_count)} tail impressions",
            ),
            _card(
                "Cold share",
                "cold-share",
                _share(summary.cold_impression_count, impressions),
                f"{_count(summary.cold_impression_count)} cold impressions",
            ),
            _card(
                "Catalogue coverage",
                "coverage",
                _share(summary.distinct_item_count, summary.catalogue_size),
                f"{_count(summary.distinct_item_count)} of {_count(summary.catalogue_size)} items",
            ),
            _card("Exposure Gini", "gini", f"{summary.exposure_gini:.3f}", "0 = equal exposure"),
        )
    )
    hidden = "".join(
        f'<span hidden data-figure="{name}">{value}</span>'
        for name, value in (
            ("tail-impressions", summary.tail_impression_count),
            ("cold-impressions", summary.cold_impression_count),
            ("distinct-items", summary.distinct_item_count),
            ("catalogue-size", summary.catalogue_size),
        )
    )
    return (
        '<section aria-labelledby="summary"><h2 id="summary">What was served</h2>'
        f'<p class="note">From {escape(_time(window.start))} to {escape(_time(window.end))} '
        f"({escape(window.label)}). Head = the top 20% of the catalogue by interactions "
        f"({_count(summary.head_item_count)} items), tail = the rest, cold = no interactions "
        f"({_count(summary.cold_item_count)} items); each item's class now.</p>"
        f'<div class="cards">{cards}</div>{hidden}</section>'
    )


def _over_time(summary: ppb.GetExposureSummaryResponse) -> str:
    buckets = list(summary.buckets)
    labels = [_short_time(_stamp(b.start_time)) for b in buckets]
    catalogue = summary.catalogue_size
    chart = charts.line_chart(
        [
            charts.Series(
                "tail share", [_ratio(b.tail_impression_count, b.impression_count) for b in buckets]
            ),
            charts.Series(
                "cold share", [_ratio(b.cold_impression_count, b.impression_count) for b in buckets]
            ),
            charts.Series("coverage", [_ratio(b.distinct_item_count, catalogue) for b in buckets]),
        ],
        labels,
        "Tail share, cold share and coverage over time",
    )
    return (
        '<section aria-labelledby="over-time"><h2 id="over-time">Over time</h2>'
        f'<p class="note">{len(buckets)} buckets of {_duration(summary.bucket_seconds)}; '
        "coverage = distinct items served in the bucket / catalogue.</p>"
        f'<div data-chart="over-time">{chart}</div></section>'
    )


def _duration(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _lorenz(summary: ppb.GetExposureSummaryResponse) -> str:
    points = [(p.item_share, p.impression_share) for p in summary.lorenz_curve]
    chart = charts.lorenz_chart(points, summary.exposure_gini)
    return (
        '<section aria-labelledby="lorenz"><h2 id="lorenz">Who gets the exposure</h2>'
        '<p class="note">Lorenz curve over the whole catalogue (never-served items count with 0):'
        " the further below the diagonal, the more exposure goes to few items.</p>"
        f'<div data-chart="lorenz">{chart}</div></section>'
    )


def _policies(outcomes: ppb.ListPolicyOutcomesResponse) -> str:
    rows = []
    groups: list[str] = []
    ctr: dict[str, list[float]] = {"head": [], "tail": [], "cold": []}
    for o in outcomes.outcomes:
        key = f"{o.policy_name}@{o.policy_version}"
        groups.append(key)
        impressions = o.head_impression_count + o.tail_impression_count
        clicks = o.head_click_count + o.tail_click_count
        cells = [
            ("lists", _count(o.list_count)),
            ("impressions", _count(impressions)),
            ("head-impressions", _count(o.head_impression_count)),
            ("tail-impressions", _count(o.tail_impression_count)),
            ("cold-impressions", _count(o.cold_impression_count)),
            ("clicks", _count(clicks)),
            ("ctr-head", _share(o.head_click_count, o.head_impression_count)),
            ("ctr-tail", _share(o.tail_click_count, o.tail_impression_count)),
            ("ctr-cold", _share(o.cold_click_count, o.cold_impression_count)),
        ]
        ctr["head"].append(_ratio(o.head_click_count, o.head_impression_count))
        ctr["tail"].append(_ratio(o.tail_click_count, o.tail_impression_count))
        ctr["cold"].append(_ratio(o.cold_click_count, o.cold_impression_count))
        rows.append(
            f'<tr data-policy="{escape(key)}"><td>{escape(o.policy_name)}</td>'
            f"<td>{escape(o.policy_version)}</td>"
            + "".join(f'<td class="num" data-figure="{n}">{escape(v)}</td>' for n, v in cells)
            + "</tr>"
        )
    if not rows:
        table = '<p class="note">Nothing was served in this window.</p>'
        chart = ""
    else:
        table = (
            "<table><thead><tr><th>policy</th><th>version</th>"
            + "".join(
                f'<th class="num">{h}</th>'
                for h in (
                    "lists",
                    "impressions",
                    "head",
                    "tail",
                    "cold",
                    "clicks",
                    "CTR head",
                    "CTR tail",
                    "CTR cold",
                )
            )
            + f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
        chart = charts.grouped_bars(
            groups,
            [charts.Series(f"CTR {name}", values) for name, values in ctr.items()],
            "Click-through of head, tail and cold items per policy",
        )
    return (
        '<section aria-labelledby="policies"><h2 id="policies">Per policy</h2>'
        '<p class="note">The online side of the accuracy/exposure trade-off. A click is feedback '
        "of kind click naming the request and an item it served (an impression clicked twice "
        "counts once); CTR = clicked impressions / impressions. Tail includes cold.</p>"
        f'{table}<div data-chart="ctr">{chart}</div></section>'
    )


def _gap_table(gaps: Sequence[ppb.ExposureGap], figure: str) -> str:
    if not gaps:
        return f'<p class="note" data-figure="{figure}-empty">None in this window.</p>'
    rows = "".join(
        f'<tr data-item="{escape(g.item_id)}"><td>{escape(g.item_id)}</td>'
        f"<td>{escape(g.title)}</td><td>{_class_tag(g.is_tail, g.is_cold)}</td>"
        f'<td class="num">{_count(g.impression_count)}</td>'
        f'<td class="num">{100 * g.impression_share:.2f}%</td>'
        f'<td class="num">{100 * g.merit_share:.2f}%</td>'
        f'<td class="num">{100 * g.gap:+.2f} pt</td></tr>'
        for g in gaps
    )
    return (
        f'<table data-figure="{figure}"><thead><tr><th>item</th><th>title</th><th>class</th>'
        '<th class="num">impressions</th><th class="num">exposure</th><th class="num">merit</th>'
        f'<th class="num">gap</th></tr></thead><tbody>{rows}</tbody></table>'
    )


def _gaps(gaps: ppb.ListExposureGapsResponse) -> str:
    return (
        '<section aria-labelledby="gaps"><h2 id="gaps">Over- and under-exposed items</h2>'
        '<p class="note">Exposure against relevance merit as the fair_exposure policy weighs them:'
        " in each served list, merit = the item's min-max scaled score / the list's sum; an "
        "item's merit share = its merits / lists served, its exposure = its impressions / all "
        f"impressions. Among the {_count(gaps.served_item_count)} items served (the log keeps "
        "served lists, not the candidate pools).</p>"
        '<div class="row"><div style="flex:1 1 480px"><h3>Most over-exposed</h3>'
        f"{_gap_table(gaps.over_exposed, 'over-exposed')}</div>"
        '<div style="flex:1 1 480px"><h3>Most under-exposed</h3>'
        f"{_gap_table(gaps.under_exposed, 'under-exposed')}</div></div></section>"
    )


def _explorer(requests: ppb.ListServedRequestsResponse) -> str:
    rows = "".join(
        f"<tr><td>{_request_link(r.request_id)}</td><td>{escape(r.user_id)}</td>"
        f"<td>{escape(r.policy_name)}</td><td>{escape(r.policy_version)}</td>"
        f"<td>{escape(_time(_stamp(r.served_at)))}</td></tr>"
        for r in requests.requests
    )
    latest = (
        "<table><thead><tr><th>request</th><th>user</th><th>policy</th><th>version</th>"
        f"<th>served</th></tr></thead><tbody>{rows}</tbody></table>"
        if rows
        else '<p class="note">Nothing was served in this window.</p>'
    )
    return (
        '<section aria-labelledby="explorer"><h2 id="explorer">Request explorer</h2>'
        + _explorer_form("")
        + f"<h3>Latest served lists in the window</h3>{latest}</section>"
    )


def _explorer_form(value: str) -> str:
    return (
        '<form class="inline" method="get" action="/requests" role="search">'
        '<label for="request-id">request_id</label>'
        f'<input id="request-id" name="request_id" size="40" value="{escape(value)}" required>'
        '<button type="submit">find</button></form>'
    )


def _configuration(config: Configuration) -> str:
    entries: list[tuple[str, str, str]] = []
    if config.exposure is not None:
        entries.append(("Default policy", "default-policy", config.exposure.default_policy))
        entries.append(("Policy version", "policy-version", config.exposure.policy_version))
        entries.append(
            (
                "Policies",
                "policies",
                ", ".join(p.name for p in config.exposure.policies),
            )
        )
    if config.ranking is not None:
        r = config.ranking
        entries.append(("Collaborative model", "collaborative-version", r.collaborative_version))
        entries.append(
            (
                "ANN index",
                "index-version",
                f"{r.index_version} ({r.index_kind}, {_count(r.indexed_item_count)} items)",
            )
        )
        entries.append(
            (
                "Item vectors from",
                "vector-model",
                f"{r.embedding_model_name} {r.embedding_model_version}",
            )
        )
    if config.embeddings is not None:
        e = config.embeddings
        entries.append(
            (
                "Encoder (embeddings)",
                "encoder",
                f"{e.model_name} {e.model_version}, dimension {e.dimension}"
                + ("" if e.ready else " (not ready)"),
            )
        )
    for publication in config.active_models:
        entries.append(
            (
                f"Registry: {publication.model_kind}",
                f"registry-{publication.model_kind}",
                f"{publication.version} (published {_time(_stamp(publication.published_at))}"
                + (f" by {publication.published_by}" if publication.published_by else "")
                + ")",
            )
        )
    rows = "".join(
        f'<tr><th scope="row">{escape(label)}</th><td data-figure="{escape(figure)}">'
        f"{escape(value or '—')}</td></tr>"
        for label, figure, value in entries
    )
    problems = "".join(
        f'<li class="problem">{escape(name)}: {escape(text)}</li>'
        for name, text in sorted(config.problems.items())
    )
    return (
        '<section aria-labelledby="config"><h2 id="config">Running configuration</h2>'
        f"<table>{rows}</table>"
        + (f'<p class="note">Not shown:</p><ul>{problems}</ul>' if problems else "")
        + "</section>"
    )


def overview_page(overview: Overview, window: WindowView) -> str:
    body = "".join(
        (
            _summary(overview.summary, window),
            _over_time(overview.summary),
            '<div class="row"><div style="flex:0 1 380px">',
            _lorenz(overview.summary),
            '</div><div style="flex:1 1 600px">',
            _policies(overview.outcomes),
            "</div></div>",
            _gaps(overview.gaps),
            _explorer(overview.requests),
            _configuration(overview.configuration),
        )
    )
    return _document("Longtail exposure", _window_form(window), body)


def request_page(request_id: str, answer: ppb.GetServedRequestResponse) -> str:
    clicks: dict[str, list[str]] = {}
    for f in answer.feedback:
        clicks.setdefault(f.item_id, []).append(_KINDS.get(f.kind, "other"))
    first = answer.items[0].impression
    rows = "".join(
        f'<tr data-position="{i.impression.position}"><td class="num">{i.impression.position}</td>'
        f'<td data-figure="item">{escape(i.impression.item_id)}</td><td>{escape(i.title)}</td>'
        f"<td>{_class_tag(i.is_tail, i.is_cold)}</td>"
        f'<td data-figure="reason">{escape(_REASONS.get(i.impression.reason, "unspecified"))}</td>'
        f'<td class="num">{i.impression.score:.4f}</td>'
        f'<td class="num">{_count(i.interaction_count)}</td>'
        f'<td data-figure="feedback">{escape(", ".join(clicks.get(i.impression.item_id, [])))}'
        "</td></tr>"
        for i in answer.items
    )
    policies = sorted(
        {(i.impression.policy_name, i.impression.policy_version) for i in answer.items}
    )
    feedback = "".join(
        f"<li>{escape(_time(_stamp(f.occurred_at)))}: {escape(_KINDS.get(f.kind, 'other'))} on "
        f"{escape(f.item_id)} by {escape(f.user_id)}</li>"
        for f in answer.feedback
    )
    body = (
        '<section aria-labelledby="request"><h2 id="request">Request '
        f'<span data-figure="request-id">{escape(request_id)}</span></h2>'
        f'<p>Served to <b data-figure="user">{escape(first.user_id)}</b> at '
        f"{escape(_time(_stamp(first.served_at)))} by "
        f'<b data-figure="policy">{escape(", ".join(f"{n}@{v}" for n, v in policies))}</b>.</p>'
        "<table><thead><tr><th class=num>position</th><th>item</th><th>title</th><th>class</th>"
        "<th>why (reason)</th><th class=num>score</th><th class=num>interactions</th>"
        f"<th>feedback</th></tr></thead><tbody>{rows}</tbody></table>"
        + (f"<h3>Feedback on this request</h3><ul>{feedback}</ul>" if feedback else "")
        + "</section>"
        + f'<section>{_explorer_form(request_id)}<p><a href="/">back to the overview</a></p>'
        "</section>"
    )
    return _document(f"Request {request_id}", "", body)


def message_page(title: str, message: str, request_id: str | None = None) -> str:
    form = f"<section>{_explorer_form(request_id)}</section>" if request_id is not None else ""
    return _document(
        title,
        "",
        f'<section class="error" role="alert"><h2>{escape(title)}</h2>'
        f'<p data-figure="message">{escape(message)}</p><p><a href="/">back to the overview</a>'
        f"</p></section>{form}",
    )
