"""Does fine-tuning the item encoder on interactions place brand-new items better? (issue 12)

On movielens-latest-small with the item cold-start split (``cold_item_split``, 20% of the items
held out with all their interactions, seeded): content-only recommendations (user vector = mean
of the history's item vectors, cosine) with the frozen all-MiniLM-L6-v2 vectors and with the
fine-tuned encoder's vectors, scored by the evaluation's own code
(``services.suite.evaluation.cold.baseline_rows``, ``ContentOnly``). Held-out items are served
without their user tags (``runner.catalogue_to_serve``).

Tuning never sees the test: a validation slice is carved from the warm training part the same
way (a further seeded 20% of the warm items held out), each candidate config is fine-tuned on
the validation's training part and scored among the validation-cold items; the best one by
Recall@20 among cold candidates is then fine-tuned on the whole warm training part and scored on
the test. Vectors come from ``model.py``'s ``Encoder`` (ONNX runtime, as served).

    .venv/bin/python -m benchmarks.encoder_tuning --out /tmp/encoder-tuning/run
"""

from __future__ import annotations

import argparse
import dataclasses
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
from services.ranking.torch_training import peak_rss_mb
from services.suite import datasets
from services.suite.evaluation import cold
from services.suite.evaluation.baselines import ContentOnly, TrainMatrix, recommend
from services.suite.evaluation.runner import catalogue_to_serve
from services.suite.evaluation.split import ColdItemSplit, cold_item_split
from services.suite.indexing import item_text
from services.training.encoder import (
    EncoderTuningConfig,
    default_base,
    fine_tune_encoder,
)

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "datasets" / "movielens-latest-small"
)
KS = (10, 20)
Vectors = Mapping[str, npt.NDArray[np.float32]]


def candidates(base: EncoderTuningConfig) -> list[EncoderTuningConfig]:
    """The configs compared on the validation slice (one knob at a time around ``base``)."""
    return [
        dataclasses.replace(base, history_items=1),
        dataclasses.replace(base, history_items=3),
    ]


def served_texts(
    items: Sequence[datasets.ItemRecord], split: ColdItemSplit[datasets.InteractionRecord]
) -> dict[str, str]:
    """Item id -> the text the suite embeds (held-out items without their tags)."""
    out: dict[str, str] = {}
    for item in catalogue_to_serve(items, split):
        proto = common_pb2.Item(
            item_id=item.item_id,
            title=item.title,
            description=item.description,
            tags=item.tags,
            categories=item.categories,
        )
        out[item.item_id] = item_text(proto)
    return out


def embed(folder: Path, texts: Mapping[str, str], cache_dir: Path) -> tuple[dict[str, Any], float]:
    """Vectors of every text with model.py's Encoder (ONNX, exported on first use)."""
    model = load_model_module()
    started = time.perf_counter()
    encoder = model.Encoder(folder, runtime="onnx", cache_dir=cache_dir, threads=2)
    ids = list(texts)
    matrix = encoder.encode([texts[i] for i in ids])
    return {i: matrix[n] for n, i in enumerate(ids)}, time.perf_counter() - started


def cold_accuracy(
    split: ColdItemSplit[datasets.InteractionRecord],
    catalogue: Sequence[str],
    vectors: Vectors,
    seed: int,
) -> dict[str, float]:
    """Content-only among the held-out items and among all items, the evaluation's code."""
    relevant = split.cold.relevant_items()
    users = sorted(relevant)
    train = TrainMatrix.build(((e.user_id, e.item_id) for e in split.train), catalogue, users)
    row = cold.baseline_rows(
        train, users, relevant, split.held_out, {"encoder": vectors}, seed, KS
    )[0]
    assert row.among_cold is not None and row.among_all is not None
    out = {f"cold_{k}": v for k, v in row.among_cold.items()}
    out.update({f"all_{k}": v for k, v in row.among_all.items()})
    return out


def warm_ndcg(
    split: ColdItemSplit[datasets.InteractionRecord], catalogue: Sequence[str], vectors: Vectors
) -> dict[str, float]:
    """Content-only on the warm per-user time split (train -> warm test), all items."""
    relevant = split.warm.relevant_items()
    users = sorted(relevant)
    train = TrainMatrix.build(((e.user_id, e.item_id) for e in split.train), catalogue, users)
    model = ContentOnly(vectors)
    model.fit(train)
    scores = cold.accuracy(recommend(model, train, users, max(KS)), relevant, KS)
    return {f"warm_{k}": v for k, v in scores.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=EncoderTuningConfig.steps)
    parser.add_argument("--skip-validation", action="store_true", help="test the default only")
    parser.add_argument(
        "--frozen-results",
        type=Path,
        help="results.json of an earlier run with the same data and seed: reuse its frozen rows",
    )
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out: Path = options.out
    out.mkdir(parents=True, exist_ok=True)
    onnx_cache = out / "onnx"
    base = default_base()
    seed = options.seed

    dataset = datasets.read_movielens(options.data)
    catalogue = [item.item_id for item in dataset.items]
    test_split = cold_item_split(dataset.interactions, 0.2, seed)
    # Validation: the same protocol inside the warm training part (test items never in it).
    val_split = cold_item_split(test_split.train, 0.2, seed)
    test_texts = served_texts(dataset.items, test_split)
    # In validation the validation-cold items are the brand-new ones: served without tags.
    val_texts = {
        item: text
        for item, text in served_texts(
            [
                dataclasses.replace(i, tags=[]) if i.item_id in val_split.held_out else i
                for i in dataset.items
            ],
            test_split,
        ).items()
    }
    results: dict[str, Any] = {"seed": seed, "runs": []}

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))

    if options.frozen_results:
        earlier = json.loads(options.frozen_results.read_text())
        if earlier["seed"] != seed:
            raise SystemExit("--frozen-results comes from another seed")
        results["frozen"] = earlier["frozen"]
    else:
        frozen_val, _ = embed(base, val_texts, onnx_cache)
        frozen_test, frozen_embed_s = embed(base, test_texts, onnx_cache)
        results["frozen"] = {
            "validation": cold_accuracy(val_split, catalogue, frozen_val, seed),
            "test": cold_accuracy(test_split, catalogue, frozen_test, seed)
            | warm_ndcg(test_split, catalogue, frozen_test),
            "embed_seconds": frozen_embed_s,
        }
    save()
    print("frozen:", json.dumps(results["frozen"], indent=1))

    default = dataclasses.replace(EncoderTuningConfig(seed=seed), steps=options.steps)
    chosen = default
    if not options.skip_validation:
        best = -1.0
        for number, config in enumerate(candidates(default)):
            folder = out / f"validation-{number}"
            # Validation vectors come from the trainer itself (no export per candidate); the
            # test below goes through the served path (ONNX).
            report = fine_tune_encoder(
                base, val_texts, val_split.train, folder, config, True, val_texts
            )
            scores = cold_accuracy(val_split, catalogue, report.vectors, seed)
            results["runs"].append(
                {
                    "part": "validation",
                    "config": dataclasses.asdict(config),
                    "report": report.summary(),
                    "scores": scores,
                }
            )
            save()
            print(f"validation {config}: {scores}")
            if scores["cold_recall@20"] > best:
                best, chosen = scores["cold_recall@20"], config

    folder = out / "test-encoder"
    report = fine_tune_encoder(base, test_texts, test_split.train, folder, chosen, progress=True)
    vectors, embed_s = embed(folder, test_texts, onnx_cache)
    scores = cold_accuracy(test_split, catalogue, vectors, seed) | warm_ndcg(
        test_split, catalogue, vectors
    )
    results["runs"].append(
        {
            "part": "test",
            "config": dataclasses.asdict(chosen),
            "report": report.summary(),
            "embed_seconds": embed_s,
            "scores": scores,
            "peak_rss_mb_process": peak_rss_mb(),
        }
    )
    save()
    write_tables(results, out)
    return 0


def write_tables(results: Mapping[str, Any], out: Path) -> None:
    """results.csv (one line per encoder and part) and a printed table."""
    columns = [
        "cold_recall@20",
        "cold_ndcg@20",
        "all_recall@20",
        "all_ndcg@20",
        "warm_ndcg@10",
    ]
    lines: list[list[str]] = []
    frozen = results["frozen"]
    for part in ("validation", "test"):
        lines.append(["frozen MiniLM", part, "-"] + [_cell(frozen[part].get(c)) for c in columns])
    for run in results["runs"]:
        config = run["config"]
        label = (
            f"H={config['history_items']} layers={config['trainable_layers']} "
            f"steps={config['steps']} lr={config['learning_rate']:g} tau={config['temperature']:g}"
        )
        lines.append(
            ["fine-tuned", run["part"], label] + [_cell(run["scores"].get(c)) for c in columns]
        )
    header = ["encoder", "part", "config", *columns]
    write_csv(out / "results.csv", header, lines)
    emit_table(
        Console(),
        "content-only with the frozen and the fine-tuned encoder",
        header,
        lines,
        left=("encoder", "part", "config"),
        echo_markdown=True,
    )


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    raise SystemExit(main())
