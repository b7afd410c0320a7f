"""The ``longtail`` command line: run the suite, load data, index, train, recommend, explain.

Targets default to the local ports (gateway 50050 … exposure 50054) and can be set with
``--gateway`` etc. or ``LONGTAIL_<SERVICE>_TARGET``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from rich.console import Console
from rich.table import Table

from longtail.common.v1 import common_pb2
from longtail.profiles.v1 import profiles_service_pb2
from longtail.ranking.v1 import ranking_service_pb2
from longtail_client.client import DEFAULT_TARGETS, LongtailClient, policy_spec
from services.suite.evaluation.command import add_eval_arguments, cmd_eval

if TYPE_CHECKING:
    from services.ranking.config import RankingSettings
    from services.suite.local import LocalSuite

console = Console()

REASONS = {value: name.removeprefix("REASON_").lower() for name, value in common_pb2.Reason.items()}


def _targets(args: argparse.Namespace) -> dict[str, str]:
    return {
        name: getattr(args, name, None)
        or os.environ.get(f"LONGTAIL_{name.upper()}_TARGET")
        or default
        for name, default in DEFAULT_TARGETS.items()
    }


def _client(args: argparse.Namespace) -> LongtailClient:
    return LongtailClient(
        _targets(args),
        token=args.token or os.environ.get("LONGTAIL_AUTH_TOKEN"),
        tls_ca_file=Path(args.tls_ca) if args.tls_ca else None,
        timeout_seconds=args.timeout,
    )


def _policy(args: argparse.Namespace) -> common_pb2.PolicySpec | None:
    if not args.policy and not args.explore and args.seed is None:
        return None
    params: dict[str, str | float | bool] = {}
    for pair in args.param or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--param takes key=value, got {pair!r}")
        params[key] = value
    spec = policy_spec(args.policy or "relevance", params, args.explore, args.seed)
    if not args.policy:
        spec.ClearField("relevance")  # only explore/seed given: keep the service's default policy
    return spec


def print_recommendation(answer: object, title: str = "") -> None:
    table = Table(title=title or None)
    for column in ("#", "item", "title", "score", "reason", "tail", "cold"):
        table.add_column(column, justify="right" if column in ("#", "score") else "left")
    for item in answer.items:  # type: ignore[attr-defined]
        table.add_row(
            str(item.position),
            item.item_id,
            item.title[:48],
            f"{item.score:.4f}",
            REASONS.get(item.reason, "?"),
            "yes" if item.is_tail else "",
            "yes" if item.is_cold else "",
        )
    console.print(table)
    console.print(
        f"request_id={answer.request_id} policy={answer.policy_name} "  # type: ignore[attr-defined]
        f"version={answer.policy_version} fallback={answer.fallback}"  # type: ignore[attr-defined]
    )


async def cmd_recommend(args: argparse.Namespace) -> None:
    async with _client(args) as client:
        answer = await client.recommend(
            args.user_id,
            args.k,
            policy=_policy(args),
            interests=args.interests or "",
            request_id=args.request_id or "",
            include_seen=args.include_seen,
        )
    print_recommendation(answer, f"Recommend for {args.user_id}")


async def cmd_feedback(args: argparse.Namespace) -> None:
    kind = common_pb2.InteractionKind.Value(f"INTERACTION_KIND_{args.kind.upper()}")
    async with _client(args) as client:
        answer = await client.feedback(args.request_id, args.item_id, kind, args.value)
    console.print("recorded" if answer.recorded else "already recorded")


async def cmd_explain(args: argparse.Namespace) -> None:
    async with _client(args) as client:
        answer = await client.explain(args.request_id)
    table = Table(title=f"Request {answer.request_id} for user {answer.user_id}")
    for column in ("#", "item", "title", "policy", "reason", "score", "tail", "cold", "pop"):
        table.add_column(column)
    for item in answer.items:
        imp = item.impression
        table.add_row(
            str(imp.position),
            imp.item_id,
            item.title[:40],
            f"{imp.policy_name} {imp.policy_version}",
            REASONS.get(imp.reason, "?"),
            f"{imp.score:.4f}",
            "yes" if item.is_tail else "",
            "yes" if item.is_cold else "",
            str(item.popularity),
        )
    console.print(table)


async def cmd_policies(args: argparse.Namespace) -> None:
    async with _client(args) as client:
        answer = await client.policies()
    table = Table(
        title=f"Exposure policies (default {answer.default_policy}, "
        f"version {answer.policy_version})"
    )
    for column in ("policy", "defaults", "description"):
        table.add_column(column)
    for policy in answer.policies:
        defaults = ", ".join(f"{k}={v}" for k, v in sorted(policy.defaults.items()))
        table.add_row(policy.name, defaults, policy.description)
    console.print(table)


async def cmd_load(args: argparse.Namespace) -> None:
    from services.suite import datasets

    if args.format == "demo":
        dataset = datasets.make_demo_catalogue(args.items, args.users, args.seed)
    elif args.format == "movielens":
        dataset = datasets.read_movielens(Path(args.path))
    else:
        dataset = datasets.read_generic(Path(args.path))
    async with _client(args) as client:
        report = await datasets.upload(dataset, client.profiles, timeout=args.timeout)
    console.print(report)


async def cmd_index(args: argparse.Namespace) -> None:
    from services.suite.indexing import index_catalogue

    async with _client(args) as client:
        report = await index_catalogue(client.profiles, client.embeddings, args.batch_size)
        console.print(report)
        reloaded = await client.ranking.ReloadModels(
            ranking_service_pb2.ReloadModelsRequest(), timeout=120
        )
    console.print(
        f"ranking reloaded: {reloaded.indexed_item_count} items, index {reloaded.index_version}"
    )


def _with_store_arguments(settings: RankingSettings, args: argparse.Namespace) -> RankingSettings:
    """``settings`` with the artefact store the command line names (``_add_store_arguments``)."""
    import dataclasses

    if args.artifact_dir:
        settings = dataclasses.replace(settings, artifact_dir=Path(args.artifact_dir))
    if args.store_url:
        settings = dataclasses.replace(settings, artifact_store_url=args.store_url)
    if args.s3_endpoint:
        settings = dataclasses.replace(settings, artifact_s3_endpoint=args.s3_endpoint)
    return settings


async def cmd_train(args: argparse.Namespace) -> None:
    """The training job in this process (not in ranking): read through profiles, fit, write the
    bundle to the artefact store, publish it; ranking replicas switch at their next poll."""
    import dataclasses

    from services.common.settings import load_settings
    from services.ranking.config import RankingSettings
    from services.training.config import TrainingSettings
    from services.training.job import RANKING_PREFIX, TRAINING_PREFIX, run_training

    targets = _targets(args)
    ranking = dataclasses.replace(
        load_settings(RankingSettings, RANKING_PREFIX),
        profiles_target=targets["profiles"],
        embeddings_target=targets["embeddings"],
        client_auth_token=args.token or os.environ.get("LONGTAIL_AUTH_TOKEN"),
        client_tls_ca_file=Path(args.tls_ca) if args.tls_ca else None,
    )
    ranking = _with_store_arguments(ranking, args)
    job = dataclasses.replace(
        load_settings(TrainingSettings, TRAINING_PREFIX),
        factors=args.factors,
        iterations=args.iterations,
        publish=not args.no_publish,
        reason=args.reason,
        published_by=args.published_by or "",
    )
    if args.encoder:
        job = dataclasses.replace(job, encoder=True, encoder_steps=args.encoder_steps)
    report = await run_training(ranking, job)
    if report.encoder is not None:
        encoder = report.encoder
        console.print(
            f"encoder {encoder.version.bundle_id} (vectors {encoder.version.label}, "
            f"{encoder.manifest.size_bytes / 1e6:.0f} MB): {encoder.tuning['steps']} steps, "
            f"ONNX = PyTorch within {encoder.onnx_max_difference:.1e}; "
            + (
                f"served, {encoder.reindexed} items re-embedded; "
                if encoder.published
                else "not published; "
            )
            + f"{encoder.seconds} s"
        )
    data = report.manifest.data
    console.print(
        f"bundle {report.version} ({report.manifest.size_bytes / 1e6:.1f} MB) in {report.store}: "
        f"{data.get('users')} users, {data.get('interacted_items')} items, "
        f"{data.get('interactions')} interactions; {report.seconds} s; "
        f"peak RSS {report.peak_rss_mb:.0f} MB"
    )
    console.print(f"validation: {report.manifest.metrics or 'none (no learned ranker)'}")
    console.print(
        "published: the ranking replicas switch at their next poll"
        if report.published
        else "not published (--no-publish)"
    )


async def cmd_prune_bundles(args: argparse.Namespace) -> None:
    """Delete the bundles that fell out of every kind's rollback window (the registry's last
    ``--keep`` published versions per kind stay, the active one among them)."""

    from services.common.artifacts import (
        delete_bundles,
        incomplete_bundles,
        list_bundles,
        open_store,
        plan_prune,
    )
    from services.common.registry import ProfilesModelRegistry
    from services.common.settings import load_settings
    from services.ranking.config import RankingSettings
    from services.training.job import RANKING_PREFIX

    if args.keep < 1:
        raise SystemExit("--keep must be >= 1 (the active version of each kind always stays)")
    settings = _with_store_arguments(load_settings(RankingSettings, RANKING_PREFIX), args)
    store = open_store(settings.store_settings())
    client = _client(args)
    try:
        publications = await ProfilesModelRegistry(client.profiles, args.timeout).publications()
    finally:
        await client.close()
    bundles = await asyncio.to_thread(list_bundles, store)
    plan = plan_prune(bundles, publications, args.keep, delete_unpublished=args.delete_unpublished)
    incomplete = await asyncio.to_thread(incomplete_bundles, store)
    table = Table(title=f"bundles in {store.location}")
    table.add_column("bundle")
    table.add_column("action")
    for bundle_id in bundles:
        if bundle_id in plan.deleted:
            action = "delete" if not args.dry_run else "would delete"
        elif bundle_id in plan.kept:
            action = "keep (published)"
        else:
            action = "keep (never published; --delete-unpublished deletes it)"
        table.add_row(bundle_id, action)
    for bundle_id in incomplete:
        table.add_row(bundle_id, "keep (incomplete: a writer may still be writing)")
    console.print(table)
    if args.dry_run:
        console.print(f"dry run: {len(plan.deleted)} bundles would be deleted")
        return
    files = await asyncio.to_thread(delete_bundles, store, plan.deleted)
    console.print(f"deleted {len(plan.deleted)} bundles ({files} files), kept {len(plan.kept)}")


def cmd_migrate(args: argparse.Namespace) -> None:
    from services.profiles.store import migrate

    url = args.database_url or f"sqlite:///{Path('.longtail/longtail.db').resolve()}"
    migrate(url)
    console.print(f"migrated {url}")


async def _serve_until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _show_supervisor_log() -> None:
    """Print the runner's own events (a child's exit, its restart) on stderr."""
    logger = logging.getLogger("longtail.suite")
    if not any(getattr(handler, "longtail_cli", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s supervisor: %(message)s", "%H:%M:%S"))
        handler.longtail_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


async def cmd_up(args: argparse.Namespace, demo: bool = False) -> None:
    from services.suite.local import FIXED_PORTS, LocalSuite, PortInUseError, SuiteConfig

    workdir = Path(args.workdir)
    config = SuiteConfig(
        workdir=workdir,
        database_url=args.database_url,
        ports={} if args.free_ports else FIXED_PORTS,
        supervise=not args.no_restart,
    )
    _show_supervisor_log()
    console.print("[bold]starting Triton and the five services…[/bold]")
    try:
        await _run_suite(LocalSuite(config), args, demo)
    except PortInUseError as error:
        console.print(f"[red]{error}[/red]")
        sys.exit(1)


async def _run_suite(suite: LocalSuite, args: argparse.Namespace, demo: bool) -> None:
    async with suite:
        for name, target in suite.targets.items():
            console.print(f"  {name:<10} {target}  (log {suite.log_path(name)})")
        console.print(f"  {'triton':<10} {suite.triton_url}")
        if suite.dashboard_url:
            console.print(f"  [bold]dashboard  {suite.dashboard_url}[/bold]  (open in a browser)")
        if demo:
            await _demo(args, suite.targets)
        if args.exit:
            return
        restarting = "restarts what exits; " if suite.config.supervise else ""
        console.print(f"[bold green]serving ({restarting}Ctrl-C to stop)[/bold green]")
        if suite.dashboard_url:
            console.print(f"the exposure dashboard: [bold]{suite.dashboard_url}[/bold]")
        await _serve_until_signal()


async def _demo(args: argparse.Namespace, targets: dict[str, str]) -> None:
    from services.suite import datasets
    from services.suite.indexing import index_catalogue

    async with LongtailClient(targets, timeout_seconds=30) as client:
        stats = await client.profiles.GetCatalogStats(
            profiles_service_pb2.GetCatalogStatsRequest(), timeout=30
        )
        if stats.item_count == 0:
            console.print("loading the demo catalogue…")
            dataset = datasets.make_demo_catalogue(seed=0)
            await datasets.upload(dataset, client.profiles)
        console.print("indexing the catalogue through Triton…")
        console.print(await index_catalogue(client.profiles, client.embeddings))
        console.print("training the collaborative model…")
        trained = await client.ranking.TrainModel(
            ranking_service_pb2.TrainModelRequest(), timeout=600
        )
        console.print(f"  model {trained.collaborative_version} in {trained.duration_seconds:.1f}s")
        await client.ranking.ReloadModels(ranking_service_pb2.ReloadModelsRequest(), timeout=120)
        page = await client.profiles.ListInteractions(
            profiles_service_pb2.ListInteractionsRequest(page_size=1), timeout=30
        )
        user = page.interactions[0].user_id if page.interactions else "demo-user"
        answer = await client.recommend(user, 10)
        print_recommendation(answer, f"Recommend(user_id={user!r}, k=10)")
        cold = await client.recommend(
            "new-visitor", 10, interests="space exploration, rockets and astronomy documentaries"
        )
        print_recommendation(cold, "Recommend for a new user with stated interests")


def _add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the bundles are (train, prune-bundles), over the LONGTAIL_RANKING_ARTIFACT_* ones."""
    parser.add_argument(
        "--artifact-dir",
        help="bundle folder (default LONGTAIL_RANKING_ARTIFACT_DIR or .longtail/artifacts)",
    )
    parser.add_argument(
        "--store-url", help="s3://bucket/prefix instead of the folder (AWS_* credentials)"
    )
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint, e.g. http://127.0.0.1:8333")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longtail", description=__doc__)
    for name in DEFAULT_TARGETS:
        parser.add_argument(f"--{name}", help=f"{name} address (default {DEFAULT_TARGETS[name]})")
    parser.add_argument("--token", help="bearer token (or LONGTAIL_AUTH_TOKEN)")
    parser.add_argument("--tls-ca", help="CA certificate file for TLS")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline per call, seconds")
    sub = parser.add_subparsers(dest="command", required=True)

    for name, helptext in (
        ("up", "start Triton and the five services locally"),
        ("demo", "start the suite, load+index+train the demo, recommend"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--workdir", default=".longtail", help="state folder (SQLite, artefacts)")
        p.add_argument("--database-url", help="SQLAlchemy URL (default SQLite in the workdir)")
        p.add_argument("--fresh", action="store_true", help="start from an empty workdir")
        p.add_argument("--free-ports", action="store_true", help="free ports, not 50050-50054")
        p.add_argument("--exit", action="store_true", help="stop after starting (and the demo)")
        p.add_argument(
            "--no-restart",
            action="store_true",
            help="leave a service or Triton that exits down (default: restart it, with backoff)",
        )

    p = sub.add_parser("recommend", help="ask the gateway for a list")
    p.add_argument("user_id")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--policy", help="relevance, tail_xquad, calibrated, mmr, tail_quota, …")
    p.add_argument("--param", action="append", help="policy parameter key=value (repeatable)")
    p.add_argument("--explore", type=int, default=0, help="exploration slots")
    p.add_argument("--seed", type=int)
    p.add_argument("--interests", help="free-text interests (new users)")
    p.add_argument("--request-id")
    p.add_argument("--include-seen", action="store_true")

    p = sub.add_parser("feedback", help="record feedback on a served item")
    p.add_argument("request_id")
    p.add_argument("item_id")
    p.add_argument("--kind", default="click", choices=["view", "click", "purchase", "rating"])
    p.add_argument("--value", type=float, default=0.0)

    p = sub.add_parser("explain", help="show what a request served and why")
    p.add_argument("request_id")

    sub.add_parser("policies", help="list the exposure policies and their defaults")

    p = sub.add_parser("load", help="load a data set into the store through profiles")
    p.add_argument("format", choices=["movielens", "generic", "demo"])
    p.add_argument("path", nargs="?", help="data folder (movielens, generic)")
    p.add_argument("--items", type=int, default=3000, help="demo: items")
    p.add_argument("--users", type=int, default=400, help="demo: users")
    p.add_argument("--seed", type=int, default=0, help="demo: seed")

    p = sub.add_parser("index", help="embed items whose vector is missing or stale")
    p.add_argument("--batch-size", type=int, default=256)

    p = sub.add_parser(
        "train",
        help="the training job, in this process: fit through profiles, write a bundle, publish it",
    )
    p.add_argument("--factors", type=int, default=0)
    p.add_argument("--iterations", type=int, default=0)
    _add_store_arguments(p)
    p.add_argument("--no-publish", action="store_true", help="write the bundle, do not publish it")
    p.add_argument("--reason", default="longtail train", help="why (recorded in the registry)")
    p.add_argument("--published-by", help="who (default: training job on <host>)")
    p.add_argument(
        "--encoder",
        action="store_true",
        help="first fine-tune the item text encoder on the interactions, publish it (Triton "
        "serves it as a new version), re-embed the catalogue; then fit on the new vectors",
    )
    p.add_argument("--encoder-steps", type=int, default=0, help="0 = the default step count")

    p = sub.add_parser(
        "prune-bundles",
        help="delete model bundles older than each kind's last --keep published versions",
    )
    p.add_argument(
        "--keep",
        type=int,
        default=3,
        help="published versions kept per model kind: the active one and the rollback targets "
        "(default 3)",
    )
    p.add_argument("--dry-run", action="store_true", help="show the plan, delete nothing")
    p.add_argument(
        "--delete-unpublished",
        action="store_true",
        help="also delete complete bundles that were never published",
    )
    _add_store_arguments(p)

    p = sub.add_parser("migrate", help="create or upgrade the store schema (Alembic)")
    p.add_argument("--database-url")

    p = sub.add_parser(
        "eval", help="offline evaluation: baselines and every policy through a fresh suite"
    )
    add_eval_arguments(p)
    return parser


COMMANDS = {
    "recommend": cmd_recommend,
    "feedback": cmd_feedback,
    "explain": cmd_explain,
    "policies": cmd_policies,
    "load": cmd_load,
    "index": cmd_index,
    "train": cmd_train,
    "prune-bundles": cmd_prune_bundles,
    "eval": cmd_eval,
}


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "load" and args.format != "demo" and not args.path:
        raise SystemExit("load movielens|generic needs a folder")
    try:
        if args.command == "migrate":
            cmd_migrate(args)
        elif args.command in ("up", "demo"):
            if args.fresh:
                shutil.rmtree(args.workdir, ignore_errors=True)
            asyncio.run(cmd_up(args, demo=args.command == "demo"))
        else:
            asyncio.run(COMMANDS[args.command](args))
    except grpc.aio.AioRpcError as error:
        console.print(f"[red]{error.code().name}[/red]: {error.details()}")
        sys.exit(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
