"""A sequential user tower (issue 12): the last items of a user's history -> one user vector in
the item-vector space.

Ranking today builds the user vector as the recency-weighted mean of the history's (unit) item
vectors and uses it for content ANN retrieval and the ``content_user`` feature. The tower is a
drop-in replacement for that vector: same dimension, L2-normalised, compared with item vectors by
cosine. It reads content vectors only (no item-id embeddings), so a cold item with a vector is
placed like any other, and a user with stated interests and no history goes through the same
tower as a sequence of length 1 (the interests' text vector).

Input: the last ``max_length`` item vectors, oldest first, zero-padded on the LEFT to
``max_length``, and the number of real entries (``lengths``). A GRU or a small self-attention
block reads the sequence; its summary (the last position) and the plain mean of the real entries
go through one linear map to the item dimension. That map starts as "the mean" (identity on the
mean, near zero on the summary), so training starts from the mean-of-history rule and learns
what the order adds.

Training: next-item prediction. Each prefix of a user's time-ordered history predicts the next
item, with a softmax over the vectors of every item seen in training (a 10k x 384 matrix is
cheap), the user's earlier items masked out (serving excludes them too), at a fixed temperature.
Items that never occur in the interactions are not negatives: learning "nobody consumes this
region" is exactly the bias that would bury cold items.

Repeatable: seeds, a fixed thread count, a seeded order of the examples and deterministic
algorithms give bit-identical weights for the same inputs on the same machine and libraries.

Serving artefact (``save_user_tower``): a folder with config.json, weights.safetensors and
model.onnx (inputs ``history`` float32 (batch, max_length, dim) and ``lengths`` int64 (batch,);
output ``user_vector`` float32 (batch, dim); dynamic batch, fixed max_length).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from services.ranking.torch_training import (
    Interaction,
    deterministic_torch,
    peak_rss_mb,
    warmup_then_linear_decay,
)

log = logging.getLogger("longtail.training.user_tower")

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
ARCHITECTURES = ("gru", "attention")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
ONNX_FILE = "model.onnx"
ONNX_INPUTS = ("history", "lengths")
ONNX_OUTPUT = "user_vector"
# Additive attention mask on padding; finite so that ONNX Runtime and PyTorch agree exactly.
MASKED = -1e9


@dataclasses.dataclass(frozen=True)
class UserTowerConfig:
    """Defaults chosen on the validation slice of movielens-latest-small (see
    ``benchmarks/user_tower.py``)."""

    seed: int = 0
    architecture: str = "attention"
    # History entries read (the most recent ones); shorter histories are left-padded.
    max_length: int = 50
    hidden: int = 128
    layers: int = 1
    heads: int = 4  # attention only
    # At most this many steps, and at most ``epochs`` passes over the examples (on
    # movielens-latest-small 300 steps of 256 are about one pass; a small catalogue needs far
    # fewer, so the cost follows the data).
    steps: int = 300
    epochs: float = 1.0
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    temperature: float = 0.05
    # Share of the steps with a linear warm-up; the rate then decays linearly to 0.
    warmup_share: float = 0.05
    # One thread: on a shared 2-core machine two threads ran a GRU step 20-40x slower
    # (spinning OpenMP workers), and the model is small.
    threads: int = 1

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}")
        if self.max_length < 1 or self.hidden < 1 or self.layers < 1:
            raise ValueError("max_length, hidden and layers must be at least 1")
        if self.architecture == "attention" and self.hidden % self.heads:
            raise ValueError("hidden must be a multiple of heads")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be at least 1")
        if not self.temperature > 0:
            raise ValueError("temperature must be positive")


@dataclasses.dataclass(frozen=True)
class UserTowerReport:
    steps: int
    epochs: float  # passes over the training examples
    examples: int  # (prefix -> next item) examples available
    users: int
    items: int  # items in the softmax (those that occur in the interactions)
    seconds: float
    peak_rss_mb: float
    loss_first: float
    loss_last: float

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- the model


class _AttentionBlock(nn.Module):
    """Pre-norm self-attention + feed-forward over the sequence, padding masked as keys."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden)
        )

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        head_dim = hidden // self.heads
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, length, self.heads, head_dim).transpose(1, 2)

        scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(head_dim)
        weights = torch.softmax(scores + additive_mask, dim=-1)
        attended = (weights @ split(v)).transpose(1, 2).reshape(batch, length, hidden)
        x = x + self.out(attended)
        result: torch.Tensor = x + self.ffn(self.norm2(x))
        return result


class UserTower(nn.Module):
    """(history (B, N, D), lengths (B,)) -> unit user vectors (B, D) in the item space."""

    def __init__(self, dimension: int, config: UserTowerConfig) -> None:
        super().__init__()
        self.dimension = dimension
        self.config = config
        hidden = config.hidden
        self.input = nn.Linear(dimension, hidden)
        self.gru: nn.GRU | None = None
        self.blocks = nn.ModuleList()
        if config.architecture == "gru":
            self.gru = nn.GRU(hidden, hidden, num_layers=config.layers, batch_first=True)
        else:
            self.position = nn.Parameter(torch.randn(config.max_length, hidden) * 0.02)
            self.blocks.extend(_AttentionBlock(hidden, config.heads) for _ in range(config.layers))
            self.final_norm = nn.LayerNorm(hidden)
        self.output = nn.Linear(hidden + dimension, dimension)
        with torch.no_grad():
            # Start as the mean of the history: identity on the mean, a small summary term.
            self.output.weight[:, :hidden].mul_(0.1)
            self.output.weight[:, hidden:].copy_(torch.eye(dimension))
            self.output.bias.zero_()

    def forward(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        length = history.shape[1]
        positions = torch.arange(length, device=history.device)
        # Left padding: the real entries are the last ``lengths`` positions.
        real = positions.unsqueeze(0) >= (length - lengths).unsqueeze(1)
        weights = real.to(history.dtype).unsqueeze(-1)
        x = self.input(history) * weights
        if self.gru is not None:
            states, _ = self.gru(x)
            summary = states[:, -1]
        else:
            x = x + self.position[:length]
            additive = (1.0 - real.to(x.dtype))[:, None, None, :] * MASKED
            for block in self.blocks:
                x = block(x, additive)
            summary = self.final_norm(x[:, -1])  # the newest entry is always real
        count = lengths.to(history.dtype).clamp(min=1.0).unsqueeze(-1)
        mean = (history * weights).sum(dim=1) / count
        vector = self.output(torch.cat([summary, mean], dim=-1))
        return nn.functional.normalize(vector, p=2.0, dim=-1)


# --------------------------------------------------------------------------- inputs


def time_ordered_histories(
    interactions: Sequence[Interaction], known_items: Collection[str]
) -> dict[str, list[str]]:
    """Per user, item ids in (time, item id) order; a repeated item counts at its first time
    only, items outside ``known_items`` (no vector) are skipped."""
    by_user: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for event in interactions:
        if event.item_id in known_items:
            by_user[event.user_id].append((event.occurred_at.timestamp(), event.item_id))
    out: dict[str, list[str]] = {}
    for user in sorted(by_user):
        out[user] = list(dict.fromkeys(item for _, item in sorted(by_user[user])))
    return out


def pad_sequences(
    sequences: Sequence[npt.ArrayLike], max_length: int, dimension: int
) -> tuple[FloatArray, IntArray]:
    """Each sequence (L_i, D) of vectors, oldest first -> its last ``max_length`` rows,
    left-padded with zeros, and the lengths. A sequence of one vector (e.g. stated interests) is
    fine; an empty one is refused (there is nothing to build a user from)."""
    history = np.zeros((len(sequences), max_length, dimension), dtype=np.float32)
    lengths = np.zeros(len(sequences), dtype=np.int64)
    for row, sequence in enumerate(sequences):
        array = np.asarray(sequence, dtype=np.float32).reshape(-1, dimension)[-max_length:]
        if array.shape[0] == 0:
            raise ValueError(f"sequence {row} is empty")
        history[row, max_length - array.shape[0] :] = array
        lengths[row] = array.shape[0]
    return history, lengths


def history_arrays(
    histories: Sequence[Sequence[str]], item_vectors: Mapping[str, FloatArray], max_length: int
) -> tuple[FloatArray, IntArray]:
    """Item-id histories (oldest first) -> ``pad_sequences`` of their vectors."""
    dimension = len(next(iter(item_vectors.values())))
    return pad_sequences(
        [np.stack([item_vectors[i] for i in h[-max_length:]]) for h in histories],
        max_length,
        dimension,
    )


def user_vectors(
    model: UserTower, history: FloatArray, lengths: IntArray, batch_size: int = 1024
) -> FloatArray:
    """The tower's user vectors in PyTorch (the reference the ONNX export is checked against)."""
    model.eval()
    parts: list[FloatArray] = []
    with torch.inference_mode():
        for start in range(0, len(history), batch_size):
            out = model(
                torch.from_numpy(history[start : start + batch_size]),
                torch.from_numpy(lengths[start : start + batch_size]),
            )
            parts.append(out.numpy().astype(np.float32))
    if not parts:
        return np.zeros((0, model.dimension), dtype=np.float32)
    return np.concatenate(parts)


# --------------------------------------------------------------------------- training


def train_user_tower(
    item_vectors: Mapping[str, FloatArray],
    interactions: Sequence[Interaction],
    config: UserTowerConfig | None = None,
    progress: bool = False,
) -> tuple[UserTower, UserTowerReport]:
    """Fit the tower on next-item prediction over ``interactions`` (training ones only: never
    test interactions, never held-out items').

    ``item_vectors``: item id -> unit vector (the served item vectors). Items without a vector
    are skipped in histories; the softmax runs over the items that occur in ``interactions``.
    """
    from tqdm import tqdm

    config = config or UserTowerConfig()
    started = time.perf_counter()
    histories = time_ordered_histories(interactions, item_vectors.keys())
    items = sorted({item for history in histories.values() for item in history})
    if not items:
        raise ValueError("no interaction has an item with a vector")
    index = {item: row for row, item in enumerate(items)}
    dimension = len(item_vectors[items[0]])
    catalogue = np.stack([np.asarray(item_vectors[i], dtype=np.float32) for i in items])
    catalogue /= np.maximum(np.linalg.norm(catalogue, axis=1, keepdims=True), 1e-12)
    # One zero row at the end: the padding index.
    padded_catalogue = torch.from_numpy(
        np.vstack([catalogue, np.zeros((1, dimension), np.float32)])
    )
    item_matrix = torch.from_numpy(catalogue)
    pad = len(items)

    sequences = [np.array([index[i] for i in h], dtype=np.int64) for h in histories.values()]
    # Example = (sequence, position t >= 1): the items before t predict the item at t.
    example_sequence = np.concatenate(
        [np.full(len(s) - 1, n, dtype=np.int64) for n, s in enumerate(sequences) if len(s) > 1]
        or [np.zeros(0, dtype=np.int64)]
    )
    example_position = np.concatenate(
        [np.arange(1, len(s), dtype=np.int64) for s in sequences if len(s) > 1]
        or [np.zeros(0, dtype=np.int64)]
    )
    if len(example_sequence) == 0:
        raise ValueError("no user has two or more items: nothing to predict")
    window = config.max_length

    def batch_tensors(
        chosen: npt.NDArray[np.int64],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = np.full((len(chosen), window), pad, dtype=np.int64)
        lengths = np.zeros(len(chosen), dtype=np.int64)
        targets = np.zeros(len(chosen), dtype=np.int64)
        seen_rows: list[npt.NDArray[np.int64]] = []
        seen_cols: list[npt.NDArray[np.int64]] = []
        for row, example in enumerate(chosen):
            sequence = sequences[example_sequence[example]]
            position = int(example_position[example])
            recent = sequence[max(0, position - window) : position]
            rows[row, window - len(recent) :] = recent
            lengths[row] = len(recent)
            targets[row] = sequence[position]
            seen_rows.append(np.full(position, row, dtype=np.int64))
            seen_cols.append(sequence[:position])
        history = padded_catalogue[torch.from_numpy(rows)]
        seen = (
            torch.from_numpy(np.concatenate(seen_rows)),
            torch.from_numpy(np.concatenate(seen_cols)),
        )
        return history, torch.from_numpy(lengths), torch.from_numpy(targets), torch.stack(seen)

    steps = max(
        1,
        min(config.steps, math.ceil(config.epochs * len(example_sequence) / config.batch_size)),
    )
    with deterministic_torch(config.seed, config.threads):
        model = UserTower(dimension, config)
        model.train()
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        warmup = max(1, math.ceil(config.warmup_share * steps))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_then_linear_decay(step, steps, warmup)
        )
        losses: list[float] = []
        order: list[int] = []
        epoch = 0
        for step in tqdm(range(steps), desc="user tower", disable=not progress):
            if len(order) < config.batch_size:
                # A fresh seeded permutation per epoch; a batch never straddles two epochs.
                order = (
                    np.random.default_rng([config.seed, epoch])
                    .permutation(len(example_sequence))
                    .tolist()
                )
                epoch += 1
            chosen = np.asarray(order[: config.batch_size], dtype=np.int64)
            del order[: config.batch_size]
            history, lengths, targets, seen = batch_tensors(chosen)
            users = model(history, lengths)
            logits = users @ item_matrix.T / config.temperature
            # The user's earlier items are excluded at serving; they are not negatives here.
            logits = logits.index_put((seen[0], seen[1]), torch.tensor(float("-inf")))
            loss = nn.functional.cross_entropy(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if step % 100 == 0 or step == steps - 1:
                log.info("user tower step %d/%d loss %.4f", step + 1, steps, losses[-1])
        model.eval()

    span = max(1, min(20, len(losses) // 10))
    report = UserTowerReport(
        steps=steps,
        epochs=steps * config.batch_size / len(example_sequence),
        examples=len(example_sequence),
        users=len(histories),
        items=len(items),
        seconds=time.perf_counter() - started,
        peak_rss_mb=peak_rss_mb(),
        # Means over the first/last few steps: one batch alone is noisy.
        loss_first=float(np.mean(losses[:span])),
        loss_last=float(np.mean(losses[-span:])),
    )
    return model, report


# --------------------------------------------------------------------------- artefacts


def export_user_tower_onnx(model: UserTower, path: Path) -> Path:
    """ONNX of ``model``: dynamic batch, fixed ``max_length`` (written atomically)."""
    model.eval()
    length = model.config.max_length
    example = (
        torch.zeros((2, length, model.dimension), dtype=torch.float32),
        torch.tensor([1, length], dtype=torch.int64),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        with torch.inference_mode():
            torch.onnx.export(
                model,
                example,
                temporary,
                input_names=list(ONNX_INPUTS),
                output_names=[ONNX_OUTPUT],
                dynamic_axes={
                    "history": {0: "batch"},
                    "lengths": {0: "batch"},
                    ONNX_OUTPUT: {0: "batch"},
                },
                opset_version=17,
                # The dynamo exporter needs onnxscript, which the project does not install.
                dynamo=False,
            )
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


class OnnxUserTower:
    """The exported tower run with onnxruntime (what a Triton ONNX model serves)."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session: Any = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        shape = self.session.get_inputs()[0].shape
        self.max_length = int(shape[1])
        self.dimension = int(shape[2])

    def user_vectors(self, history: FloatArray, lengths: IntArray) -> FloatArray:
        result = self.session.run(
            [ONNX_OUTPUT],
            {"history": history.astype(np.float32), "lengths": lengths.astype(np.int64)},
        )[0]
        return np.asarray(result, dtype=np.float32)


def save_user_tower(model: UserTower, folder: Path) -> Path:
    """config.json + weights.safetensors + model.onnx in ``folder``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    description = {"dimension": model.dimension, "config": dataclasses.asdict(model.config)}
    (folder / CONFIG_FILE).write_text(json.dumps(description, indent=2), encoding="utf-8")
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    export_user_tower_onnx(model, folder / ONNX_FILE)
    return folder


def load_user_tower(folder: Path) -> UserTower:
    """The PyTorch tower saved by ``save_user_tower`` (eval mode)."""
    from safetensors.torch import load_file

    description = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    model = UserTower(int(description["dimension"]), UserTowerConfig(**description["config"]))
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    model.eval()
    return model
