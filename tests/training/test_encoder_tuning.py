"""The fine-tuned item encoder: repeatable to the bit, served unchanged by model.py (PyTorch and
ONNX), and it does move co-consumed items closer. A tiny synthetic catalogue and step budget."""

from __future__ import annotations

import csv
import datetime as dt
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from services.embeddings.tritonserver import load_model_module
from services.suite.datasets import InteractionRecord
from services.training.encoder import (
    EncoderTuningConfig,
    EncoderTuningReport,
    default_base,
    fine_tune_encoder,
)

MOVIES = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "datasets"
    / "movielens-latest-small"
    / "movies.csv"
)
WORDS = [
    "harbor", "violin", "glacier", "orchard", "lantern", "meteor", "canyon", "ledger",
    "falcon", "quartz", "saddle", "tundra", "anchor", "bamboo", "comet", "dune",
    "ember", "fjord", "garnet", "hollow",
]  # fmt: skip
GROUPS = 4
EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
CONFIG = EncoderTuningConfig(
    seed=0,
    steps=12,
    batch_size=16,
    trainable_layers=1,
    learning_rate=3e-4,
    max_tokens=16,
    holdout_examples=16,
)


def catalogue() -> dict[str, str]:
    """40 items named by word pairs; their group (item number mod 4) is not in the text."""
    pairs = list(itertools.permutations(WORDS, 2))
    return {f"i{n}": f"The {a} and the {b}" for n, (a, b) in enumerate(pairs[::9][:40])}


def interactions() -> list[InteractionRecord]:
    """48 users, each consuming 8 items of one group over 8 days (384 interactions)."""
    rng = np.random.default_rng(7)
    items = list(catalogue())
    out: list[InteractionRecord] = []
    for user in range(48):
        group = [item for n, item in enumerate(items) if n % GROUPS == user % GROUPS]
        for day, item in enumerate(rng.permutation(group)[:8]):
            when = EPOCH + dt.timedelta(days=day, minutes=user)
            out.append(InteractionRecord(f"u{user}", str(item), "view", 1.0, when))
    return out


def tune(folder: Path, seed: int = 0) -> EncoderTuningReport:
    config = EncoderTuningConfig(**{**CONFIG.__dict__, "seed": seed})
    texts = catalogue()
    return fine_tune_encoder(default_base(), texts, interactions(), folder, config, False, texts)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EncoderTuningReport]:
    folder = tmp_path_factory.mktemp("encoder") / "seed0"
    return folder, tune(folder)


def movie_texts(count: int = 32) -> list[str]:
    with MOVIES.open(newline="", encoding="utf-8") as handle:
        rows = list(itertools.islice(csv.DictReader(handle), count))
    return [f"{row['title']}\nGenres: {row['genres'].replace('|', ', ')}." for row in rows]


def test_same_seed_gives_identical_weights_and_another_seed_does_not(
    tuned: tuple[Path, EncoderTuningReport], tmp_path: Path
) -> None:
    folder, report = tuned
    first = load_file(str(folder / "model.safetensors"))
    tune(tmp_path / "again", seed=0)
    second = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert first.keys() == second.keys()
    for name in first:
        assert np.array_equal(first[name], second[name]), name
    tune(tmp_path / "other", seed=1)
    other = load_file(str(tmp_path / "other" / "model.safetensors"))
    assert any(not np.array_equal(first[name], other[name]) for name in first)
    # Only the top layer was trained: the embeddings are the base's.
    base = load_file(str(default_base() / "model.safetensors"))
    name = next(n for n in first if n.endswith("word_embeddings.weight"))
    base_name = next(n for n in base if n.endswith("word_embeddings.weight"))
    assert np.array_equal(first[name], base[base_name])
    assert report.steps == CONFIG.steps and report.examples_seen == 12 * 16
    assert report.peak_rss_mb > 0 and report.loss_first > 0


def test_served_by_model_py_in_pytorch_and_onnx(
    tuned: tuple[Path, EncoderTuningReport], tmp_path: Path
) -> None:
    folder, _ = tuned
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"):
        assert (folder / name).is_file(), name
    model: Any = load_model_module()
    texts = movie_texts()
    reference = model.Encoder(folder, runtime="torch").encode(texts)
    target = model.export_onnx(folder, tmp_path / "export" / "model.onnx")
    assert target.is_file()
    served = model.Encoder(folder, runtime="onnx", cache_dir=tmp_path / "cache").encode(texts)
    assert reference.shape == (32, 384)
    np.testing.assert_allclose(served, reference, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(reference, axis=1), 1.0, atol=1e-5)
    # It is the fine-tuned function that is served, not the base one.
    base = model.Encoder(default_base(), runtime="torch").encode(texts)
    assert float(np.abs(base - reference).max()) > 1e-3


def test_co_consumed_items_move_closer(tuned: tuple[Path, EncoderTuningReport]) -> None:
    folder, report = tuned
    model: Any = load_model_module()
    texts = catalogue()
    ids = list(texts)
    group = {item: n % GROUPS for n, item in enumerate(ids)}
    pairs = [(a, b) for a, b in itertools.combinations(ids, 2) if group[a] == group[b]]
    others = [(a, b) for a, b in itertools.combinations(ids, 2) if group[a] != group[b]]

    def margin(folder: Path) -> tuple[float, float]:
        matrix = model.Encoder(folder, runtime="torch").encode([texts[i] for i in ids])
        vectors = dict(zip(ids, matrix, strict=True))
        if folder == tuned[0]:
            # The trainer's own vectors (embed_texts) are the served ones.
            mine = np.stack([report.vectors[i] for i in ids])
            np.testing.assert_allclose(mine, matrix, atol=1e-5, rtol=0)
        same = float(np.mean([vectors[a] @ vectors[b] for a, b in pairs]))
        apart = float(np.mean([vectors[a] @ vectors[b] for a, b in others]))
        return same, same - apart

    base_same, base_margin = margin(default_base())
    tuned_same, tuned_margin = margin(folder)
    assert tuned_same > base_same
    # Closer relative to unrelated items too, not just everything squeezed together.
    assert tuned_margin > base_margin
    assert report.validation["cosine_after"] > report.validation["cosine_before"]
