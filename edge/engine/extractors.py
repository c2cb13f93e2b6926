"""Extractors: uint8 frames in, unscaled patch embeddings out — one interface, several runtimes.

An extractor turns a batch of same-size network inputs, (n, H, W, 3) uint8, into (n, h, w, D)
float32 patch embeddings on its output device (`device`), before any bank's per-level scales: it
knows nothing of banks, so one extractor serves every bank of its backbone and survives reloads.

- `torch`: eager torch on the CPU or a CUDA GPU (uint8 uploaded, normalised on the device; on CUDA
  from pinned memory, optionally in fp16 or bf16).
- `onnxruntime`: the whole graph (pixels → embeddings) exported to ONNX once per input size (a
  dynamic batch), cached beside the bank under a key of what decides its numbers (backbone,
  weights, input size, torch/ONNX versions), run by ONNX Runtime (CPU here; its CUDA provider
  where installed). Past MAX_ONNX_SIZES sizes, further sizes go to a torch extractor.
- `tensorrt`: the same ONNX file, built into a TensorRT fp16 engine by ONNX Runtime's TensorRT
  provider with one optimisation profile over the batch buckets, the engine cached per GPU model
  and TensorRT version; built at warm-up, never per frame.

`build_extractor` chooses: `auto` is ONNX Runtime on the CPU when it is installed (measured
faster, docs/engine.md; one session per input size a bank meets), torch otherwise. Asking for a
runtime that is not installed, or for CUDA without a usable GPU, is a UsageError naming what to
install.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from edge import __version__
from edge.engine.backbones import Backbone, BackboneSpec
from edge.engine.config import EXTRACTOR_PRECISIONS, EXTRACTORS
from edge.engine.features import PatchEmbedder
from edge.errors import UsageError

log = logging.getLogger("edge.engine")
PINNED_SHAPES = 8  # page-locked upload buffers kept (one per batch shape)
BATCH_BUCKETS = (1, 8, 32, 64)  # warmed up (and the TensorRT profile's range): the batches a station uses
ONNX_OPSET = 18
MAX_ONNX_SIZES = 16  # exported graphs an ONNX Runtime extractor holds open (input sizes), then torch


def torch_device(name: str) -> torch.device:
    """The torch device `name` names, or UsageError when it cannot run here (no traceback)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device {name!r}; use cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"device {name!r} asked for, but no CUDA GPU is usable here (no NVIDIA driver or GPU, "
                "or a CPU build of torch); use --device cpu"
            )
        if (device.index or 0) >= torch.cuda.device_count():
            raise UsageError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work: every timer on CUDA reads after this."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Extractor(ABC):
    """(n, H, W, 3) uint8 → (n, h, w, D) float32 unscaled patch embeddings on `device`."""

    name: str
    device: torch.device

    def __init__(self, backbone: Backbone) -> None:
        self.spec: BackboneSpec = backbone.spec
        self.weights_id = backbone.weights_id
        self.random_weights = backbone.random_weights

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.spec.level_widths)

    @property
    def dim(self) -> int:
        return sum(self.widths)

    @abstractmethod
    def __call__(self, pixels: np.ndarray) -> torch.Tensor: ...

    def warm_up(self, input_hw: tuple[int, int], batches: Sequence[int] = BATCH_BUCKETS) -> None:
        """Run every batch bucket once, so that no part waits for first-call set-up."""
        for batch in batches:
            self(np.zeros((batch, *input_hw, 3), np.uint8))
        synchronize(self.device)


class TorchExtractor(Extractor):
    def __init__(self, backbone: Backbone, device: str = "cpu", precision: str = "fp32") -> None:
        super().__init__(backbone)
        self.device = torch_device(device)
        if precision not in EXTRACTOR_PRECISIONS:
            raise UsageError(f"extractor precision must be one of {', '.join(EXTRACTOR_PRECISIONS)}")
        if precision != "fp32" and self.device.type != "cuda":
            raise UsageError(f"{precision} extraction is for CUDA devices; the CPU extracts in fp32")
        self.precision = precision
        self.name = f"torch-{self.device.type}" + ("" if precision == "fp32" else f"-{precision}")
        self.module = PatchEmbedder(backbone).to(self.device).eval()
        self.pinned: dict[tuple[int, ...], torch.Tensor] = {}

    def _upload(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 (4x less than float) through a page-locked buffer kept per batch shape; the copy is
        asynchronous, and a buffer is reused only after its batch's results were read back."""
        buffer = self.pinned.get(pixels.shape)
        if buffer is None:
            if len(self.pinned) >= PINNED_SHAPES:
                self.pinned.clear()
            buffer = self.pinned[pixels.shape] = torch.empty(pixels.shape, dtype=torch.uint8).pin_memory()
        buffer.numpy()[...] = pixels
        return buffer.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        if self.device.type != "cuda":
            return self.module(torch.from_numpy(np.ascontiguousarray(pixels)))
        batch = self._upload(pixels)
        if self.precision != "fp32":
            dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            with torch.autocast("cuda", dtype=dtype):
                return self.module(batch).float()
        return self.module(batch)


def onnx_key(backbone: Backbone, input_hw: tuple[int, int]) -> str:
    """What decides an exported graph's numbers: a new key means a new file, never a stale one."""
    parts = (backbone.spec.name, backbone.weights_id, f"{input_hw[0]}x{input_hw[1]}", torch.__version__,
             f"opset{ONNX_OPSET}", __version__)  # fmt: skip
    return (
        f"{backbone.spec.name}-{input_hw[0]}x{input_hw[1]}-"
        + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    )


def export_onnx(backbone: Backbone, input_hw: tuple[int, int], path: Path) -> Path:
    """The whole graph, uint8 frames → unscaled embeddings, for a fixed input size and any batch;
    written atomically (a killed export leaves no half file)."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise UsageError("exporting to ONNX needs onnx and onnxscript: pip install 'edge[station]'") from None
    module = PatchEmbedder(backbone).eval()
    example = torch.zeros((2, *input_hw, 3), dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shapes, which are fixed here
            torch.onnx.export(
                module,
                (example,),
                tmp,
                input_names=["frames"],
                output_names=["embeddings"],
                dynamic_axes={"frames": {0: "batch"}, "embeddings": {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


class OnnxExtractor(Extractor):
    """ONNX Runtime on graphs exported per input size (lazily, cached on disk): `input_hw` is
    exported at once; other sizes on first use, up to MAX_ONNX_SIZES of them (an `area` bank's
    frames of a few shapes), then torch. TensorRT builds an engine per size, so it takes one."""

    def __init__(
        self,
        backbone: Backbone,
        input_hw: tuple[int, int] | None,
        cache_dir: Path,
        device: str = "cpu",
        tensorrt: bool = False,
    ) -> None:
        super().__init__(backbone)
        try:
            import onnxruntime
        except ImportError:
            raise UsageError(
                "the onnxruntime extractor needs ONNX Runtime: pip install 'edge[station]'"
            ) from None
        if tensorrt and input_hw is None:
            raise UsageError("the tensorrt extractor needs a fixed input size (centre crop or squash)")
        self.device = torch_device(device)
        self.runtime = onnxruntime
        self.cache_dir = cache_dir
        self.tensorrt = tensorrt
        self.name = "tensorrt" if tensorrt else f"onnxruntime-{self.device.type}"
        self.sessions: dict[tuple[int, int], object] = {}
        self.fallback: TorchExtractor | None = None
        self.backbone = backbone
        self.input_hw = tuple(input_hw) if input_hw is not None else None
        if self.input_hw is not None:
            self._session(self.input_hw)

    @property
    def path(self) -> Path | None:
        """The graph of the size given at construction."""
        return self.path_for(self.input_hw) if self.input_hw is not None else None

    def path_for(self, input_hw: tuple[int, int]) -> Path:
        return self.cache_dir / f"{onnx_key(self.backbone, input_hw)}.onnx"

    def _session(self, input_hw: tuple[int, int]) -> object | None:
        """The session for this input size: exported and opened on first use; None when the
        extractor already holds as many sizes as it may (or runs TensorRT on its one size)."""
        session = self.sessions.get(input_hw)
        if session is not None:
            return session
        if len(self.sessions) >= (1 if self.tensorrt else MAX_ONNX_SIZES):
            return None
        path = self.path_for(input_hw)
        if not path.is_file():
            log.info("exporting the %s extractor to %s (once per input size)", self.spec.name, path)
            export_onnx(self.backbone, input_hw, path)
        options = self.runtime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # idle threads sleep rather than spin: the search and the other station processes need the cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        # no arena: activations go back to the allocator after each run instead of staying
        # reserved at their peak (bottle fit: 1.65 GB peak with the arena, under 1.5 GB without)
        options.enable_cpu_mem_arena = False
        providers = self._providers(input_hw)
        session = self.sessions[input_hw] = self.runtime.InferenceSession(
            str(path), options, providers=providers
        )
        return session

    def _providers(self, input_hw: tuple[int, int]) -> list:
        available = self.runtime.get_available_providers()
        if self.tensorrt:
            if "TensorrtExecutionProvider" not in available or self.device.type != "cuda":
                raise UsageError(
                    "the tensorrt extractor needs a CUDA GPU and ONNX Runtime with TensorRT "
                    "(onnxruntime-gpu and the TensorRT libraries: pip install 'edge[gpu]')"
                )
            gpu = torch.cuda.get_device_name(self.device).replace(" ", "_")
            engines = self.cache_dir / "tensorrt" / gpu
            engines.mkdir(parents=True, exist_ok=True)
            shape = f"frames:{{}}x{input_hw[0]}x{input_hw[1]}x3"
            options = {
                "device_id": self.device.index or 0,
                "trt_fp16_enable": True,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(engines),
                "trt_profile_min_shapes": shape.format(BATCH_BUCKETS[0]),
                "trt_profile_opt_shapes": shape.format(BATCH_BUCKETS[1]),
                "trt_profile_max_shapes": shape.format(BATCH_BUCKETS[-1]),
            }
            return [("TensorrtExecutionProvider", options), "CUDAExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise UsageError("ONNX Runtime on CUDA needs onnxruntime-gpu, which is not installed")
            return [("CUDAExecutionProvider", {"device_id": self.device.index or 0})]
        return ["CPUExecutionProvider"]

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        input_hw = (int(pixels.shape[1]), int(pixels.shape[2]))
        session = self._session(input_hw)
        if session is None:
            if self.fallback is None:
                log.info("inputs of %s and other new sizes go to torch (ONNX graphs held: %s)",
                         input_hw, sorted(self.sessions))  # fmt: skip
                self.fallback = TorchExtractor(self.backbone, str(self.device))
            return self.fallback(pixels)
        (embeddings,) = session.run(None, {"frames": np.ascontiguousarray(pixels, dtype=np.uint8)})
        return torch.from_numpy(embeddings).to(self.device)


def build_extractor(
    backbone: Backbone,
    kind: str = "auto",
    device: str = "cpu",
    input_hw: tuple[int, int] | None = None,
    cache_dir: Path | None = None,
    precision: str = "fp32",
) -> Extractor:
    """The extractor `kind` names; `auto`: ONNX Runtime on the CPU where it is installed, torch
    otherwise. `input_hw` None means inputs of any size (whole frames)."""
    if kind not in EXTRACTORS:
        raise UsageError(f"unknown extractor {kind!r}; choose one of {', '.join(EXTRACTORS)}")
    if kind == "auto":
        kind = "onnxruntime" if _onnx_usable(device) else "torch"
    if kind == "torch":
        return TorchExtractor(backbone, device, precision)
    cache = cache_dir or default_cache_dir()
    return OnnxExtractor(backbone, input_hw, cache, device, tensorrt=kind == "tensorrt")


def _onnx_usable(device: str) -> bool:
    if device != "cpu":
        return False
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def default_cache_dir() -> Path:
    """Where exported graphs and engines live when no bank folder is given."""
    root = os.environ.get("EDGE_CACHE_DIR") or os.environ.get("CACHE_DIRECTORY")
    if root:
        return Path(root.split(":")[0])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge"
