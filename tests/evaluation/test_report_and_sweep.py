"""The sweep's policy specs and the report files, without a suite."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from services.suite.evaluation.metrics import METRICS
from services.suite.evaluation.report import ResultRow, markdown, write_outputs
from services.suite.evaluation.serving import PolicySetting, default_sweep


def test_policy_settings_build_the_specs_the_gateway_reads() -> None:
    quota = PolicySetting("tail_quota", "tail_quota", {"min_tail_share": 0.3})
    spec = quota.spec(seed=5)
    assert spec.WhichOneof("policy") == "tail_quota"
    assert spec.tail_quota.min_tail_share == pytest.approx(0.3)
    assert spec.seed == 5 and not quota.stateful
    default = PolicySetting("default+explore", None, {}, explore_slots=1)
    spec = default.spec(seed=5)
    assert spec.WhichOneof("policy") is None  # the service's default policy serves
    assert spec.explore.slots == 1 and default.stateful
    assert PolicySetting("fair_exposure", "fair_exposure").stateful


def test_sweeps_put_order_dependent_settings_last() -> None:
    for full in (False, True):
        sweep = default_sweep(full)
        flags = [s.stateful for s in sweep]
        assert flags == sorted(flags), "stateless settings must come first"
        families = {s.family for s in sweep}
        assert families == {
            "relevance",
            "tail_quota",
            "tail_xquad",
            "calibrated",
            "mmr",
            "fair_exposure",
            "default+explore",
        }
        assert len({s.slug for s in sweep}) == len(sweep)  # request ids stay distinct
    assert len(default_sweep(True)) > len(default_sweep(False))
    shares = [s.params["min_tail_share"] for s in default_sweep(True) if s.family == "tail_quota"]
    assert shares == [0.1, 0.2, 0.3, 0.4, 0.5]


def _row(method: str, family: str, kind: str, setting: str, base: float) -> ResultRow:
    metrics = {f"{m}@{k}": base + 0.01 * k for m in METRICS for k in (10, 20)}
    return ResultRow(method, family, kind, setting, metrics, np.array([3, 1, 0, 0]))


def test_outputs_hold_every_row_and_metric(tmp_path: Path) -> None:
    rows = [
        _row("als", "als", "baseline", "factors=32", 0.1),
        _row("xquad(als)", "xquad(als)", "baseline", "lambda=0.1", 0.2),
        _row("xquad(als)", "xquad(als)", "baseline", "lambda=0.9", 0.3),
        _row("gateway:tail_quota", "tail_quota", "suite", "min_tail_share=0.1", 0.4),
        _row("gateway:tail_quota", "tail_quota", "suite", "min_tail_share=0.5", 0.5),
    ]
    paths = write_outputs(rows, (10, 20), tmp_path, "# title", {"Notes": "- none"})
    text = paths["markdown"].read_text()
    assert text.count("| gateway:tail_quota |") == 4  # two settings, two K tables
    assert "NDCG@10" in text and "ILD@20" in text and "### Notes" in text
    with paths["csv"].open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["method"] for r in table] == [r.method for r in rows]
    assert {f"{m}@{k}" for m in METRICS for k in (10, 20)} <= set(table[0])
    for name in ("tradeoff", "lorenz"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Each row's cells hold that row's own values at that K, formatted, in METRICS order.
    rendered = markdown(rows, (10,))
    quota_line = next(line for line in rendered.splitlines() if "| min_tail_share=0.5 |" in line)
    cells = [cell.strip() for cell in quota_line.strip("|").split("|")]
    assert cells[:2] == ["gateway:tail_quota", "min_tail_share=0.5"]
    assert float(cells[2 + METRICS.index("ndcg")]) == pytest.approx(0.5 + 0.01 * 10)
    assert "### K = 20" not in rendered and "### K = 10" in rendered


def test_cli_parses_eval_and_service_environment() -> None:
    from services.suite.cli import COMMANDS, build_parser
    from services.suite.local import parse_service_env

    args = build_parser().parse_args(
        ["eval", "data", "--full", "--env", "ranking:LONGTAIL_RANKING_KAPPA=5", "--seed", "3"]
    )
    assert args.command == "eval" and args.full and args.seed == 3 and args.split == "user"
    assert "eval" in COMMANDS
    assert parse_service_env(args.env) == {"ranking": {"LONGTAIL_RANKING_KAPPA": "5"}}
    with pytest.raises(SystemExit):
        parse_service_env(["ranking-no-colon"])


def test_subset_keeps_the_users_their_items_and_some_cold_ones() -> None:
    import datetime as dt

    from services.suite.datasets import Dataset, InteractionRecord, ItemRecord, UserRecord
    from services.suite.evaluation.runner import subset

    when = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    data = Dataset(
        items=[ItemRecord(f"i{n}") for n in range(6)],
        users=[UserRecord(u) for u in ("10", "2", "x")],
        interactions=[
            InteractionRecord("10", "i0", "rating", 4.0, when),
            InteractionRecord("2", "i1", "rating", 4.0, when),
            InteractionRecord("x", "i2", "rating", 4.0, when),
        ],
    )
    small = subset(data, 2, extra_items=2)  # natural order: "2", "10", then "x"
    assert [u.user_id for u in small.users] == ["10", "2"]
    assert [i.item_id for i in small.items] == ["i0", "i1", "i2", "i3"]
    assert {i.user_id for i in small.interactions} == {"2", "10"}
