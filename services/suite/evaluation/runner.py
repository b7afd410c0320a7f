"""``longtail eval``: split, load the training part into a fresh suite, serve, measure, report.

Steps (see README.md in this folder for the protocol):
1. split the interactions by time (per user, or globally) and carve a validation slice out of
   the training part by the same rule; or (``cold-items``) hold a seeded share of the items out
   with all their interactions and split the rest per user by time;
2. start Triton and the five services (LocalSuite, fresh workdir, SQLite), upload the training
   part, index the catalogue through Triton, train the collaborative model (with the ALS
   parameters tuned on the validation slice) and reload ranking;
3. baselines, tuned on the validation slice only: most-popular, random, ALS, content-only
   (the store's LLM vectors), xQuAD over the best relevance-only baseline's top 100;
4. every exposure-policy setting of the sweep, asked of the running gateway for every test user;
5. metrics at every K, tables, CSV and plots; with ``cold-items`` also the cold-start accuracy
   (``cold.py``) of the suite's ranking, every gateway setting and the cold baselines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from rich.console import Console

from longtail.profiles.v1 import profiles_service_pb2
from longtail.ranking.v1 import ranking_service_pb2
from longtail_client.client import LongtailClient
from services.suite import datasets
from services.suite.evaluation import cold
from services.suite.evaluation.baselines import (
    Als,
    AlsParams,
    ContentOnly,
    MostPopular,
    RandomItems,
    Recommender,
    TrainMatrix,
    recommend,
    scored_lists,
    xquad_lists,
)
from services.suite.evaluation.metrics import ItemFacts, evaluate, exposure_counts, ndcg_at_k
from services.suite.evaluation.report import ResultRow, print_tables, write_outputs
from services.suite.evaluation.serving import PolicySetting, default_sweep, serve_setting
from services.suite.evaluation.split import (
    COLD_ITEM_SHARE,
    ColdItemSplit,
    Split,
    cold_item_split,
    split,
)

if TYPE_CHECKING:  # the training stage imports torch: only when an evaluation tunes
    from services.training.encoder_stage import EncoderStageReport

TUNING_K = 10
# The content-only baselines' encoders (cold-items split).
FROZEN_ENCODER = "frozen encoder"
TUNED_ENCODER = "fine-tuned encoder"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    out: Path = Path("out/eval")
    # The suite's state folder; emptied first. Default: <out>/suite.
    workdir: Path | None = None
    # "user", "global" or "cold-items".
    split: str = "user"
    test_share: float = 0.2
    # cold-items: the share of the interacted items held out with all their interactions.
    cold_share: float = COLD_ITEM_SHARE
    min_interactions: int = 5
    ks: tuple[int, ...] = (10, 20)
    seed: int = 0
    full: bool = False
    # Recommend calls in flight for order-independent policies.
    concurrency: int = 8
    timeout: float = 30.0
    als_factors: tuple[int, ...] = (32, 64, 128)
    als_regularization: tuple[float, ...] = (0.01, 0.1)
    als_iterations: int = 15
    als_alpha: float = 1.0
    xquad_lambdas: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    xquad_pool: int = 100
    # None: default_sweep(full).
    settings: tuple[PolicySetting, ...] | None = None
    # Train the suite's collaborative model with the ALS parameters tuned on validation.
    tune_service_als: bool = True
    progress: bool = True
    # Extra environment per service (merged over the evaluation's own).
    suite_env: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)
    # Use a running Triton (host:port) instead of starting one.
    triton_url: str | None = None
    # Fine-tune the item encoder on the training part first (the training job's encoder stage)
    # and serve the suite on its vectors; content-only over the frozen encoder stays a baseline.
    tune_encoder: bool = False
    # Its steps (0 = EncoderTuningConfig's default); its seed is ``seed``.
    encoder_steps: int = 0

    @property
    def suite_workdir(self) -> Path:
        return self.workdir or self.out / "suite"

    def sweep(self) -> tuple[PolicySetting, ...]:
        return self.settings if self.settings is not None else tuple(default_sweep(self.full))


# The suite as the evaluation runs it, so that every served list depends only on the data, the
# seed and the requests served before it, never on timing (two runs print identical numbers):
# every history entry counts for the seen-item exclusion; no background refresh swaps the state
# mid-run; one ALS thread (identical factors every run); exposure counters read on every request
# (no time-based cache) and required: a read that fails makes the gateway serve, and count, its
# fallback instead of a list computed on zero counters. Only these knobs differ from a served
# suite; the policies, their defaults and the code path are the served ones.
# The most history entries profiles returns (GetUserProfile's history_limit).
GATEWAY_HISTORY_LIMIT = 1000
SUITE_ENV: Mapping[str, Mapping[str, str]] = {
    # Generous hop ceilings: the evaluation measures the lists the suite serves when healthy, not
    # the fallback a loaded 2-core machine would sometimes serve (fallbacks are still counted).
    "gateway": {
        "LONGTAIL_GATEWAY_HISTORY_LIMIT": str(GATEWAY_HISTORY_LIMIT),
        "LONGTAIL_GATEWAY_RANKING_TIMEOUT_SECONDS": "10",
        "LONGTAIL_GATEWAY_EXPOSURE_TIMEOUT_SECONDS": "10",
        "LONGTAIL_GATEWAY_PROFILE_TIMEOUT_SECONDS": "10",
        "LONGTAIL_GATEWAY_WRITE_TIMEOUT_SECONDS": "10",
    },
    "ranking": {"LONGTAIL_RANKING_REFRESH_SECONDS": "0", "LONGTAIL_RANKING_ALS_THREADS": "1"},
    "exposure": {
        "LONGTAIL_EXPOSURE_PROFILES_TIMEOUT_SECONDS": "10",
        "LONGTAIL_EXPOSURE_STATS_CACHE_SECONDS": "0",
        "LONGTAIL_EXPOSURE_STATS_REQUIRED": "true",
    },
}


class SuiteStartError(RuntimeError):
    """Triton or a service did not start (the message holds the log tail)."""


@dataclasses.dataclass
class EvalResult:
    rows: list[ResultRow]
    facts: ItemFacts
    evaluated_users: int
    summary: dict[str, Any]
    tuning: list[tuple[str, float]]
    notes: list[str]
    timings: dict[str, float]
    paths: dict[str, Path]
    # cold-items only: the cold-start accuracy per method.
    cold_rows: list[cold.ColdRow] = dataclasses.field(default_factory=list)


def natural_key(value: str) -> tuple[int, int | str]:
    return (0, int(value)) if value.isdigit() else (1, value)


def subset(
    dataset: datasets.Dataset, users: int | Iterable[str], extra_items: int = 0
) -> datasets.Dataset:
    """Some users with all their interactions, the items they touched, and ``extra_items`` more
    catalogue items (in catalogue order) that none of them touched, so that the subset keeps cold
    items. ``users``: a count (the first users in natural id order) or the ids. Deterministic."""
    if isinstance(users, int):
        interacting = sorted({i.user_id for i in dataset.interactions}, key=natural_key)
        keep_users = set(interacting[:users])
    else:
        keep_users = set(users)
    interactions = [i for i in dataset.interactions if i.user_id in keep_users]
    touched = {i.item_id for i in interactions}
    extra = [item.item_id for item in dataset.items if item.item_id not in touched][:extra_items]
    keep_items = touched | set(extra)
    return datasets.Dataset(
        items=[item for item in dataset.items if item.item_id in keep_items],
        users=[user for user in dataset.users if user.user_id in keep_users],
        interactions=interactions,
    )


class _Clock:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - started


def _mean_ndcg(lists: Mapping[str, Sequence[str]], relevant: Mapping[str, frozenset[str]]) -> float:
    values = [ndcg_at_k(lists.get(user, []), items, TUNING_K) for user, items in relevant.items()]
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else 0.0


def _train_matrix(part: Sequence[datasets.InteractionRecord], items: Sequence[str]) -> TrainMatrix:
    return TrainMatrix.build(((i.user_id, i.item_id) for i in part), items)


def tune_baselines(
    validation: Split[datasets.InteractionRecord],
    catalogue: Sequence[str],
    vectors: Mapping[str, npt.NDArray[np.float32]],
    config: EvalConfig,
) -> tuple[AlsParams, str, list[tuple[str, float]]]:
    """ALS grid and the relevance-only base of xQuAD, chosen by validation NDCG@10."""
    train = _train_matrix(validation.train, catalogue)
    relevant = {u: r for u, r in validation.relevant_items().items() if u in train.user_index}
    users = sorted(relevant, key=natural_key)
    k = TUNING_K
    results: list[tuple[str, float]] = []
    best_params: AlsParams | None = None
    best_als = -1.0
    for factors in config.als_factors:
        for reg in config.als_regularization:
            params = AlsParams(factors, reg, config.als_iterations, config.als_alpha)
            model = Als(params, seed=config.seed)
            model.fit(train)
            score = _mean_ndcg(recommend(model, train, users, k), relevant)
            results.append((f"als {params.label()}", score))
            if score > best_als:
                best_params, best_als = params, score
    assert best_params is not None
    base_scores = {"als": best_als}
    popular = MostPopular()
    popular.fit(train)
    base_scores["most_popular"] = _mean_ndcg(recommend(popular, train, users, k), relevant)
    results.append(("most_popular", base_scores["most_popular"]))
    if vectors:
        content = ContentOnly(vectors)
        content.fit(train)
        base_scores["content"] = _mean_ndcg(recommend(content, train, users, k), relevant)
        results.append(("content", base_scores["content"]))
    base = max(base_scores, key=lambda name: (base_scores[name], name))
    return best_params, base, results


async def read_vectors(
    client: LongtailClient, timeout: float
) -> dict[str, npt.NDArray[np.float32]]:
    """Every indexed item's vector, from the store (profiles ListItems include_vectors)."""
    vectors: dict[str, npt.NDArray[np.float32]] = {}
    token = ""
    while True:
        page = await client.profiles.ListItems(
            profiles_service_pb2.ListItemsRequest(
                page_size=1000, page_token=token, include_vectors=True
            ),
            timeout=timeout,
        )
        for item in page.items:
            if item.HasField("vector") and item.vector.values:
                vectors[item.item_id] = np.asarray(item.vector.values, dtype=np.float32)
        token = page.next_page_token
        if not token:
            return vectors


def _merge_env(
    base: Mapping[str, Mapping[str, str]], extra: Mapping[str, Mapping[str, str]]
) -> dict[str, dict[str, str]]:
    merged = {name: dict(env) for name, env in base.items()}
    for name, env in extra.items():
        merged.setdefault(name, {}).update(env)
    return merged


async def run_evaluation(
    dataset: datasets.Dataset,
    config: EvalConfig,
    console: Console | None = None,
    name: str = "dataset",
) -> EvalResult:
    """The whole evaluation; writes the outputs under ``config.out`` and returns the rows."""
    from services.suite.indexing import index_catalogue
    from services.suite.local import LocalSuite, SuiteConfig

    console = console or Console()
    clock = _Clock()
    started = time.perf_counter()
    notes: list[str] = []
    ks = tuple(config.ks)
    k_max = max(ks)
    catalogue = [item.item_id for item in dataset.items]
    categories = {item.item_id: item.categories for item in dataset.items}

    with clock.phase("split"):
        cold_split: ColdItemSplit[datasets.InteractionRecord] | None = None
        if config.split == cold.SPLIT_NAME:
            cold_split = cold_item_split(
                dataset.interactions,
                config.cold_share,
                config.seed,
                config.test_share,
                config.min_interactions,
            )
            parts = cold_split.warm
            # Carved from the warm training part: no held-out item in it either.
            validation = split(parts.train, "user", config.test_share, config.min_interactions)
        else:
            parts = split(
                dataset.interactions, config.split, config.test_share, config.min_interactions
            )
            validation = split(
                parts.train, config.split, config.test_share, config.min_interactions
            )
        relevant = parts.relevant_items()
        users = sorted(relevant, key=natural_key)
        cold_relevant = cold_split.cold.relevant_items() if cold_split is not None else {}
        cold_users = sorted(cold_relevant, key=natural_key)
        # Users with a warm or a cold test item are served once per setting (in one order).
        served_users = sorted(set(users) | set(cold_users), key=natural_key)
        train_matrix = TrainMatrix.build(
            ((i.user_id, i.item_id) for i in parts.train), catalogue, served_users
        )
        seen = {
            u: {train_matrix.items[i] for i in train_matrix.seen(r)}
            for u, r in ((u, train_matrix.user_index[u]) for u in served_users)
        }
    split_text = f"{config.split} time split" if cold_split is None else f"{config.split} split"
    console.print(
        f"[bold]{name}[/bold]: {len(catalogue)} items, {len(dataset.interactions)} interactions; "
        f"{split_text}: {len(parts.train)} train / {len(parts.test)} test, "
        f"{len(users)} test users; validation slice {len(validation.test)} interactions"
    )
    if cold_split is not None:
        console.print(
            f"held out {len(cold_split.held_out)} items: {len(cold_split.cold_test)} cold test "
            f"interactions of {len(cold_users)} users ({len(cold_split.dropped)} by users "
            "without training history dropped)"
        )

    workdir = config.suite_workdir
    shutil.rmtree(workdir, ignore_errors=True)
    suite_config = SuiteConfig(
        workdir=workdir,
        extra_env=_merge_env(SUITE_ENV, config.suite_env),
        triton_url=config.triton_url,
    )
    rows: list[ResultRow] = []
    cold_rows: list[cold.ColdRow] = []
    # Every setting's served lists, in sweep order (the cold-start accuracy reads them).
    served_lists: list[tuple[PolicySetting, dict[str, list[str]]]] = []
    tuning: list[tuple[str, float]] = []
    console.print("[bold]starting Triton and the five services…[/bold]")
    with clock.phase("suite start"):
        suite = LocalSuite(suite_config)
        try:
            await suite.start()
        except Exception as error:
            await suite.stop()
            raise SuiteStartError(f"the suite did not start: {error}") from error
    try:
        async with LongtailClient(suite.targets, timeout_seconds=config.timeout) as client:
            with clock.phase("upload"):
                train_data = datasets.Dataset(
                    catalogue_to_serve(dataset.items, cold_split), dataset.users, list(parts.train)
                )
                await datasets.upload(
                    train_data, client.profiles, progress=config.progress, timeout=120.0
                )
                # Head/tail is cached in profiles and refreshed on a clock; force it now, after
                # the last interaction, so that every later read sees the same complete set.
                await client.profiles.GetCatalogStats(
                    profiles_service_pb2.GetCatalogStatsRequest(), timeout=120.0
                )
            with clock.phase("index"):
                await index_catalogue(client.profiles, client.embeddings, progress=config.progress)
                await client.ranking.ReloadModels(
                    ranking_service_pb2.ReloadModelsRequest(), timeout=600
                )
                vectors = await read_vectors(client, 120.0)
            # Content-only over the frozen encoder: a baseline whatever the suite serves with.
            encoders = {FROZEN_ENCODER: vectors}
            if config.tune_encoder:
                with clock.phase("encoder tuning"):
                    tuned = await tune_encoder(client, suite.artifact_dir, config)
                    await client.ranking.ReloadModels(
                        ranking_service_pb2.ReloadModelsRequest(), timeout=600
                    )
                    vectors = await read_vectors(client, 120.0)
                    encoders[TUNED_ENCODER] = vectors
                console.print(
                    f"encoder fine-tuned: {tuned.tuning['steps']} steps in "
                    f"{tuned.seconds.get('fine_tune', 0.0):.0f} s, served as "
                    f"{tuned.version.label}; {tuned.reindexed} items re-embedded"
                )
                notes.append(
                    f"the suite served the fine-tuned encoder {tuned.version.label} "
                    f"(fine-tuning {tuned.seconds.get('fine_tune', 0.0):.0f} s, export "
                    f"{tuned.seconds.get('export', 0.0):.0f} s, switch "
                    f"{tuned.seconds.get('switch', 0.0):.0f} s, re-index "
                    f"{tuned.seconds.get('index', 0.0):.0f} s; peak memory "
                    f"{tuned.tuning['peak_rss_mb']:.0f} MB)"
                )
            if len(vectors) < len(catalogue):
                notes.append(
                    f"{len(catalogue) - len(vectors)} of {len(catalogue)} items have no vector "
                    "in the store after indexing"
                )
            facts = ItemFacts.from_training(
                catalogue, (i.item_id for i in parts.train), categories, vectors
            )

            with clock.phase("tuning"):
                # CPU work off the loop (the channels stay responsive).
                als_params, xquad_base, tuning = await asyncio.to_thread(
                    tune_baselines, validation, catalogue, vectors, config
                )
            console.print(
                f"validation: ALS {als_params.label()}; xQuAD over {xquad_base} "
                f"(NDCG@{TUNING_K} on the validation slice)"
            )

            with clock.phase("service training"):
                service_params = als_params if config.tune_service_als else AlsParams(0, 0.0, 0)
                trained = await client.ranking.TrainModel(
                    ranking_service_pb2.TrainModelRequest(
                        factors=service_params.factors,
                        iterations=service_params.iterations,
                        regularization=service_params.regularization,
                    ),
                    timeout=max(config.timeout, 1800),
                )
                await client.ranking.ReloadModels(
                    ranking_service_pb2.ReloadModelsRequest(), timeout=600
                )

            with clock.phase("baselines"):
                rows.extend(
                    await asyncio.to_thread(
                        _baseline_rows,
                        train_matrix,
                        users,
                        relevant,
                        facts,
                        vectors,
                        als_params,
                        xquad_base,
                        config,
                        ks,
                    )
                )

            settings = config.sweep()
            run_tag = f"eval-{config.seed}"
            flag_mismatch = 0
            # Held-out items served with is_cold false: the store holds an interaction with one.
            warm_held_out: set[str] = set()
            seen_served = 0
            seen_served_short = 0  # by users whose whole training history fits the limit
            train_events = Counter(i.user_id for i in parts.train)
            for setting in settings:
                with clock.phase("gateway"):
                    served = await serve_setting(
                        client,
                        served_users,
                        setting,
                        k_max,
                        seed=config.seed,
                        run_tag=run_tag,
                        concurrency=config.concurrency,
                        timeout=config.timeout,
                        progress=config.progress,
                    )
                flag_mismatch += sum(
                    1 for item, flag in served.flagged_tail.items() if flag != facts.is_tail(item)
                )
                if cold_split is not None:
                    warm_held_out.update(
                        item
                        for item, flag in served.flagged_cold.items()
                        if item in cold_split.held_out and not flag
                    )
                for user, items in served.lists.items():
                    repeats = len(set(items) & seen.get(user, set()))
                    seen_served += repeats
                    if train_events[user] <= GATEWAY_HISTORY_LIMIT:
                        seen_served_short += repeats
                row = _row(
                    f"gateway:{setting.family}",
                    setting.family,
                    "suite",
                    setting.label,
                    served.lists,
                    relevant,
                    facts,
                    ks,
                )
                row.fallbacks = served.fallbacks
                rows.append(row)
                served_lists.append((setting, served.lists))
                if served.fallbacks:
                    notes.append(
                        f"{setting.family} {setting.label}: {served.fallbacks} of "
                        f"{len(served_users)} answers came from the gateway's fallback"
                    )
            if flag_mismatch:
                notes.append(
                    f"{flag_mismatch} served items carried an is_tail flag that differs from the "
                    "evaluation's head/tail split of the training part"
                )
            if warm_held_out:
                notes.append(
                    f"{len(warm_held_out)} held-out items were served flagged warm (is_cold "
                    "false): the suite's store holds interactions with them, a leak"
                )
            if seen_served:
                long_users = sum(1 for u in served_users if train_events[u] > GATEWAY_HISTORY_LIMIT)
                notes.append(
                    f"{seen_served} served items (all settings together) were already in the "
                    f"user's training history; {seen_served - seen_served_short} of them went to "
                    f"the {long_users} users with more than {GATEWAY_HISTORY_LIMIT} training "
                    "interactions, whose oldest ones lie beyond the history the gateway reads"
                    + (
                        f"; {seen_served_short} to users within the limit: the gateway failed to "
                        "exclude them"
                        if seen_served_short
                        else ""
                    )
                )
            if cold_split is not None:
                with clock.phase("cold start"):
                    cold_rows = await _cold_rows(
                        client,
                        cold_split,
                        catalogue,
                        cold_users,
                        cold_relevant,
                        train_matrix,
                        vectors,
                        served_lists,
                        config,
                        notes,
                        encoders,
                    )
    finally:
        with clock.phase("suite stop"):
            await suite.stop()
    clock.timings["total"] = time.perf_counter() - started

    summary = {
        "dataset": name,
        "items": len(catalogue),
        "interactions": len(dataset.interactions),
        "split": config.split,
        "train_interactions": len(parts.train),
        "test_interactions": len(parts.test),
        "validation_interactions": len(validation.test),
        "evaluated_users": len(users),
        "head_items": len(facts.head),
        "cold_items": sum(1 for item in catalogue if facts.is_cold(item)),
        "ild_space": facts.ild_space,
        "als": als_params.label(),
        "xquad_base": xquad_base,
        "service_collaborative_version": trained.collaborative_version,
        "seed": config.seed,
    }
    if cold_split is not None:
        summary.update(
            {
                "cold_share": config.cold_share,
                "held_out_items": len(cold_split.held_out),
                "cold_test_interactions": len(cold_split.cold_test),
                "cold_dropped_interactions": len(cold_split.dropped),
                "cold_evaluated_users": len(cold_users),
            }
        )
    preamble = _preamble(summary, config)
    tuning_text = "\n".join(f"- {label}: NDCG@{TUNING_K} {score:.4f}" for label, score in tuning)
    extra: dict[str, str] = {}
    if cold_split is not None:
        extra["Cold start: the held-out items"] = _cold_section(summary) + cold.markdown(
            cold_rows, ks
        )
    extra["Validation (tuning) results"] = tuning_text
    if notes:
        extra["Notes"] = "\n".join(f"- {note}" for note in notes)
    paths = write_outputs(rows, ks, config.out, preamble, extra)
    if cold_split is not None:
        paths["cold_csv"] = config.out / "cold.csv"
        cold.write_csv(cold_rows, ks, paths["cold_csv"])
    (config.out / "timings.json").write_text(json.dumps(clock.timings, indent=2) + "\n")
    paths["timings"] = config.out / "timings.json"
    print_tables(rows, ks, console)
    if cold_rows:
        cold.print_table(cold_rows, ks, console)
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(
        "timings: " + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in clock.timings.items())
    )
    console.print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return EvalResult(
        rows, facts, len(users), summary, tuning, notes, clock.timings, paths, cold_rows
    )


def catalogue_to_serve(
    items: Sequence[datasets.ItemRecord],
    cold_split: ColdItemSplit[datasets.InteractionRecord] | None,
) -> list[datasets.ItemRecord]:
    """Every item, the held-out ones without their user tags: a tag is a user's action on the
    item (MovieLens' tags.csv), which a brand-new item has not had; title, description,
    categories and attributes stay, so content can place it."""
    if cold_split is None:
        return list(items)
    held = cold_split.held_out
    return [dataclasses.replace(i, tags=[]) if i.item_id in held else i for i in items]


async def _cold_rows(
    client: LongtailClient,
    cold_split: ColdItemSplit[datasets.InteractionRecord],
    catalogue: Sequence[str],
    users: Sequence[str],
    relevant: Mapping[str, frozenset[str]],
    train: TrainMatrix,
    vectors: Mapping[str, npt.NDArray[np.float32]],
    served_lists: Sequence[tuple[PolicySetting, Mapping[str, Sequence[str]]]],
    config: EvalConfig,
    notes: list[str],
    encoders: Mapping[str, Mapping[str, npt.NDArray[np.float32]]],
) -> list[cold.ColdRow]:
    """Cold-start accuracy: the ranking service, every served setting, the cold baselines."""
    ks = tuple(config.ks)
    k = max(ks)
    warm_items = frozenset(catalogue) - cold_split.held_out

    async def ranked(exclude: frozenset[str], desc: str) -> dict[str, list[str]]:
        return await cold.ranking_lists(
            client,
            users,
            k,
            exclude=exclude,
            history_limit=GATEWAY_HISTORY_LIMIT,
            concurrency=config.concurrency,
            timeout=config.timeout,
            progress=config.progress,
            desc=desc,
        )

    among_cold: dict[str, float] | None = None
    if len(warm_items) <= cold.RANK_MAX_EXCLUSIONS:
        among_cold = cold.accuracy(await ranked(warm_items, "ranking: cold only"), relevant, ks)
    else:
        notes.append(
            f"the ranking service was not measured among cold candidates: that excludes the "
            f"{len(warm_items)} other items, above RankCandidates' {cold.RANK_MAX_EXCLUSIONS}"
        )
    over_all = await ranked(frozenset(), "ranking: all items")
    rows = [
        cold.ColdRow(
            "suite:ranking",
            "RankCandidates (pre-policy)",
            among_cold,
            cold.accuracy(over_all, relevant, ks),
            cold.placement(over_all, relevant, cold_split.held_out, ks),
        )
    ]
    for setting, lists in served_lists:
        rows.append(
            cold.ColdRow(
                f"gateway:{setting.family}",
                setting.label,
                None,
                cold.accuracy(lists, relevant, ks),
                cold.placement(lists, relevant, cold_split.held_out, ks),
            )
        )
    rows += await asyncio.to_thread(
        cold.baseline_rows,
        train,
        users,
        relevant,
        cold_split.held_out,
        encoders,
        config.seed,
        ks,
    )
    return rows


async def tune_encoder(
    client: LongtailClient, artifact_dir: Path, config: EvalConfig
) -> EncoderStageReport:
    """The training job's encoder stage against the evaluation's suite: fine-tuned on what
    profiles holds (the training part only), published, served, the catalogue re-embedded."""
    from services.common.artifacts import LocalFolderStore
    from services.training.config import TrainingSettings
    from services.training.encoder_stage import run_encoder_stage

    job = TrainingSettings(
        encoder=True,
        encoder_steps=config.encoder_steps,
        encoder_seed=config.seed,
        reason="longtail eval --tune-encoder",
        published_by="longtail eval",
    )
    return await run_encoder_stage(
        job,
        client.profiles,
        client.embeddings,
        LocalFolderStore(artifact_dir),
        timeout=120.0,
        stage=lambda *args, **fields: None,
        progress=config.progress,
    )


def _cold_section(summary: Mapping[str, Any]) -> str:
    return (
        f"{summary['held_out_items']} items ({summary['cold_share']:.0%} of the interacted ones, "
        f"seed {summary['seed']}) held out with all their interactions; "
        f"{summary['cold_test_interactions']} of those interactions are the cold test "
        f"({summary['cold_evaluated_users']} users with training history); "
        f"{summary['cold_dropped_interactions']} by users without training history are in no "
        "part. *cold cands*: the method ranks only the held-out items; *all items*: its usual "
        "list over the whole catalogue. Gateway rows rank the whole catalogue only.\n\n"
    )


def _row(
    method: str,
    family: str,
    kind: str,
    setting: str,
    lists: Mapping[str, Sequence[str]],
    relevant: Mapping[str, frozenset[str]],
    facts: ItemFacts,
    ks: Sequence[int],
) -> ResultRow:
    return ResultRow(
        method=method,
        family=family,
        kind=kind,
        setting=setting,
        metrics=evaluate(lists, relevant, facts, ks),
        exposure=exposure_counts(
            (lists.get(user, ()) for user in relevant), facts.catalogue, ks[0]
        ),
    )


def _baseline_rows(
    train: TrainMatrix,
    users: Sequence[str],
    relevant: Mapping[str, frozenset[str]],
    facts: ItemFacts,
    vectors: Mapping[str, npt.NDArray[np.float32]],
    als_params: AlsParams,
    xquad_base: str,
    config: EvalConfig,
    ks: Sequence[int],
) -> list[ResultRow]:
    k_max = max(ks)
    models: dict[str, tuple[Recommender, str]] = {
        "most_popular": (MostPopular(), "-"),
        "random": (RandomItems(config.seed), f"seed={config.seed}"),
        "als": (Als(als_params, seed=config.seed), als_params.label()),
    }
    if vectors:
        models["content"] = (ContentOnly(vectors), "mean of history vectors")
    rows: list[ResultRow] = []
    for name, (model, label) in models.items():
        model.fit(train)
        lists = recommend(model, train, users, k_max)
        rows.append(_row(name, name, "baseline", label, lists, relevant, facts, ks))
    base_model = models[xquad_base][0]
    pools = scored_lists(base_model, train, users, config.xquad_pool)
    family = f"xquad({xquad_base})"
    for lam in config.xquad_lambdas:
        lists = xquad_lists(pools, train, facts.head, lam, k_max)
        rows.append(_row(family, family, "baseline", f"lambda={lam:g}", lists, relevant, facts, ks))
    return rows


def _preamble(summary: Mapping[str, Any], config: EvalConfig) -> str:
    per_user = (
        f"per user, the last {config.test_share:.0%} of each user's interactions by time are test"
    )
    if config.split == "user":
        split_rule = per_user
    elif config.split == cold.SPLIT_NAME:
        split_rule = (
            f"cold items: {summary['held_out_items']} items held out with all their "
            "interactions (the cold-start table follows the others); the main tables are the "
            f"warm part: per user, the last {config.test_share:.0%} of each user's warm "
            "interactions by time are test"
        )
    else:
        split_rule = (
            f"global: interactions in the last {config.test_share:.0%} of time order are test"
        )
    test_share_pct = f"{config.test_share:.0%}"
    return "\n".join(
        [
            f"# Offline evaluation: {summary['dataset']}",
            "",
            f"- {summary['items']} items, {summary['interactions']} interactions (implicit: "
            "every rating is an interaction)",
            f"- split: {split_rule}; users with fewer than {config.min_interactions} interactions "
            f"stay in train only; {summary['train_interactions']} train / "
            f"{summary['test_interactions']} test interactions; "
            f"{summary['evaluated_users']} users evaluated",
            f"- validation: the last {test_share_pct} of the training part by the same rule "
            f"({summary['validation_interactions']} interactions), used for all tuning",
            f"- head = top 20% of items by training interactions ({summary['head_items']} items);"
            f" tail = the rest; cold = no training interaction ({summary['cold_items']} items)",
            f"- ALS tuned on validation: {summary['als']}; xQuAD over {summary['xquad_base']}'s "
            f"top {config.xquad_pool}",
            f"- ILD over {summary['ild_space']}; seed {summary['seed']}; rows `gateway:*` are "
            "lists served by the running gateway",
        ]
    )


__all__ = [
    "EvalConfig",
    "EvalResult",
    "SuiteStartError",
    "catalogue_to_serve",
    "run_evaluation",
    "subset",
    "tune_baselines",
]
