"""The ``longtail eval`` subcommand: arguments and entry point (heavy imports happen on run)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="data folder: MovieLens layout or the generic format")
    parser.add_argument(
        "--format",
        choices=["auto", "movielens", "generic"],
        default="auto",
        help="auto: MovieLens when movies.csv exists, else generic",
    )
    parser.add_argument("--out", default="out/eval", help="output folder (default out/eval)")
    parser.add_argument("--workdir", help="suite state folder, emptied first (default <out>/suite)")
    parser.add_argument(
        "--split",
        choices=["user", "global", "cold-items"],
        default="user",
        help="user: per-user time split (default); global: one cut-off time; cold-items: a "
        "seeded share of the items held out with all their interactions (item cold start)",
    )
    parser.add_argument(
        "--cold-share",
        type=float,
        default=0.2,
        help="cold-items: the share of the interacted items held out (default 0.2)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full", action="store_true", help="the wide policy sweep")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="Recommend calls in flight (default 8)"
    )
    parser.add_argument(
        "--users", type=int, help="only the first N users (natural id order), for quick runs"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="SERVICE:NAME=VALUE",
        help="extra environment for one service, e.g. ranking:LONGTAIL_RANKING_KAPPA=5",
    )
    parser.add_argument(
        "--tune-encoder",
        action="store_true",
        help="fine-tune the item text encoder on the training part (the training job's encoder "
        "stage: Triton serves it as a new version, the catalogue is re-embedded) before the "
        "suite's models are fitted; the frozen encoder's content-only stays as a baseline",
    )
    parser.add_argument(
        "--encoder-steps", type=int, default=0, help="fine-tuning steps (0 = the default)"
    )
    parser.add_argument("--triton-url", help="use this running Triton (host:port)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


async def cmd_eval(args: argparse.Namespace) -> None:
    from rich.console import Console

    from services.suite import datasets
    from services.suite.evaluation.runner import EvalConfig, run_evaluation, subset
    from services.suite.local import parse_service_env

    folder = Path(args.path)
    fmt = args.format
    if fmt == "auto":
        movielens = await asyncio.to_thread((folder / "movies.csv").is_file)
        fmt = "movielens" if movielens else "generic"
    reader = datasets.read_movielens if fmt == "movielens" else datasets.read_generic
    try:
        dataset = await asyncio.to_thread(reader, folder)
    except datasets.DatasetError as error:
        raise SystemExit(str(error)) from error
    if args.users:
        dataset = subset(dataset, args.users)
    out = Path(args.out)
    config = EvalConfig(
        out=out,
        workdir=Path(args.workdir) if args.workdir else None,
        split=args.split,
        cold_share=args.cold_share,
        seed=args.seed,
        full=args.full,
        concurrency=args.concurrency,
        timeout=args.timeout,
        progress=not args.no_progress,
        suite_env=parse_service_env(args.env),
        triton_url=args.triton_url,
        tune_encoder=args.tune_encoder,
        encoder_steps=args.encoder_steps,
    )
    await run_evaluation(dataset, config, Console(), name=folder.name or str(folder))
