"""Extractors: uint8 frames in, unscaled patch embeddings out — one interface, several runtimes.

An extractor turns a batch of same-size network inputs, (n, H, W, 3) uint8, into (n, h, w, D)
float32 patch embeddings on its output device (`device`), before any bank's per-level scales: it
knows nothing of banks, so one extractor serves every bank of its backbone and survives reloads.

- `torch`: eager torch on the CPU or a CUDA GPU (uint8 uploaded, normalised on the device; on CUDA
  from pinned memory, optionally in fp16 or bf16).
- `openvino`: the whole graph (pixels → embeddings) exported to ONNX once, run by OpenVINO (CPU;
  also Intel GPUs), compiled once per input size it meets (about 0.1 s each), frames one at a time.
- `onnxruntime`: the same exported graph run by ONNX Runtime (CPU here; its CUDA provider where
  installed), one session per input size.
- `tensorrt`: an ONNX graph of the one fixed input size, built into a TensorRT fp16 engine by ONNX
  Runtime's TensorRT provider with one optimisation profile over the batch buckets, the engine
  cached per GPU model and TensorRT version; built at warm-up, never per frame.

Exported graphs: one with a free height and width serves every input whose sides are multiples of
the backbone's deepest stride (every `area`/`auto`, centre-crop and squash input); any other size
gets a graph of its own, exported once (about 1 s). All are cached on disk under a key of what
decides their numbers (backbone, weights, size, torch/ONNX versions). The first MAX_FIXED_SIZES
input sizes an extractor meets are each compiled for their own size (the fastest; a station's
cameras and banks use few sizes); further sizes run on one compilation of the shared graph with
a free height and width (slower, and its memory does not grow with the number of sizes). Sizes
the shared graph cannot take replace the least recently used fixed size. No size ever falls back
to another runtime.

`build_extractor` chooses: `auto` is the runtime measured fastest on the CPU for the backbone
among those installed (AUTO_CPU_RUNTIMES, docs/engine.md), torch on CUDA. Asking for a runtime
that is not installed, or for CUDA without a usable GPU, is a UsageError naming what to install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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
MAX_FIXED_SIZES = 4  # input sizes a graph extractor compiles for their own size (then: the free-size one)
# `auto` on the CPU: the installed runtime measured fastest for the backbone (bench/bench_engine.py,
# docs/engine.md "Extractors"); backbones and ensembles not named use "default"
AUTO_CPU_RUNTIMES = {
    "default": ("openvino", "onnxruntime", "torch"),
    "wide_resnet50_2": ("onnxruntime", "openvino", "torch"),
}


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


def graph_step(backbone: Backbone) -> int:
    """Inputs whose sides are multiples of this (the deepest stride) share one exported graph."""
    return max(backbone.spec.level_strides)


def shares_graph(backbone: Backbone, input_hw: tuple[int, int]) -> bool:
    step = graph_step(backbone)
    return input_hw[0] % step == 0 and input_hw[1] % step == 0


def onnx_key(backbone: Backbone, input_hw: tuple[int, int] | None) -> str:
    """What decides an exported graph's numbers: a new key means a new file, never a stale one.
    `input_hw` None: the graph with a free height and width."""
    size = "any" if input_hw is None else f"{input_hw[0]}x{input_hw[1]}"
    parts = (
        backbone.spec.name,
        backbone.weights_id,
        size,
        torch.__version__,
        f"opset{ONNX_OPSET}",
        __version__,
    )
    return f"{backbone.spec.name}-{size}-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def export_onnx(backbone: Backbone, input_hw: tuple[int, int] | None, path: Path) -> Path:
    """The whole graph, uint8 frames → unscaled embeddings, for any batch and either one input
    size or (`input_hw` None) every size that is a multiple of the deepest stride; written
    atomically (a killed export leaves no half file)."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise UsageError("exporting to ONNX needs onnx: pip install 'edge[station]'") from None
    module = PatchEmbedder(backbone).eval()
    side = graph_step(backbone) * 14  # 224 for stride 16: any multiple of the step traces the same graph
    example = torch.zeros((2, *(input_hw or (side, side)), 3), dtype=torch.uint8)
    axes = {0: "batch"} if input_hw is not None else {0: "batch", 1: "height", 2: "width"}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shapes: see graph_step
            torch.onnx.export(
                module,
                (example,),
                tmp,
                input_names=["frames"],
                output_names=["embeddings"],
                dynamic_axes={"frames": axes, "embeddings": {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


Runner = Callable[[np.ndarray], np.ndarray]


class GraphExtractor(Extractor):
    """An exported graph run by another runtime: the graph files (exported on first need, cached
    on disk), up to MAX_FIXED_SIZES compilations for one input size each, and one compilation of
    the shared graph with a free height and width for the sizes met after those."""

    def __init__(self, backbone: Backbone, cache_dir: Path, device: str = "cpu") -> None:
        super().__init__(backbone)
        self.device = torch_device(device)
        self.backbone = backbone
        self.cache_dir = cache_dir
        self.runners: OrderedDict[tuple[int, int], Runner] = OrderedDict()
        self.free_size: Runner | None = None  # the shared graph, height and width left free

    def path_for(self, input_hw: tuple[int, int] | None) -> Path:
        return self.cache_dir / f"{onnx_key(self.backbone, input_hw)}.onnx"

    def graph(self, input_hw: tuple[int, int] | None) -> Path:
        """The graph file that serves `input_hw` (the shared one where it can; None: the shared
        one), exported if missing."""
        key = None if input_hw is None or shares_graph(self.backbone, input_hw) else input_hw
        path = self.path_for(key)
        if not path.is_file():
            log.info("exporting the %s graph for %s inputs to %s (once)", self.spec.name,
                     "any multiple-of-stride" if key is None else f"{key[1]}x{key[0]}", path)  # fmt: skip
            export_onnx(self.backbone, key, path)
        return path

    def runner(self, input_hw: tuple[int, int]) -> Runner:
        runner = self.runners.get(input_hw)
        if runner is not None:
            self.runners.move_to_end(input_hw)
            return runner
        if len(self.runners) >= MAX_FIXED_SIZES:
            if shares_graph(self.backbone, input_hw):
                if self.free_size is None:
                    log.info("%s: %d input sizes compiled for their own size; %s and later sizes run on "
                             "the free-size graph", self.name, MAX_FIXED_SIZES, input_hw)  # fmt: skip
                    self.free_size = self._open(self.graph(None), None)
                return self.free_size
            closed, _ = self.runners.popitem(last=False)
            log.info("%s: closed input size %s for %s", self.name, closed, input_hw)
        runner = self.runners[input_hw] = self._open(self.graph(input_hw), input_hw)
        return runner

    @abstractmethod
    def _open(self, path: Path, input_hw: tuple[int, int] | None) -> Runner:
        """A callable running the graph at `path` on (n, *input_hw, 3) uint8 batches (None: on
        every size the graph takes)."""

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        input_hw = (int(pixels.shape[1]), int(pixels.shape[2]))
        embeddings = self.runner(input_hw)(np.ascontiguousarray(pixels, dtype=np.uint8))
        return torch.from_numpy(embeddings).to(self.device)


class OnnxExtractor(GraphExtractor):
    """ONNX Runtime, one session per input size (the shared graph with its free height and width
    fixed per session, so the runtime plans for the one size). `input_hw`, where given, is
    opened at once. TensorRT builds an engine per size, so it takes one fixed size."""

    def __init__(
        self,
        backbone: Backbone,
        input_hw: tuple[int, int] | None,
        cache_dir: Path,
        device: str = "cpu",
        tensorrt: bool = False,
    ) -> None:
        super().__init__(backbone, cache_dir, device)
        try:
            import onnxruntime
        except ImportError:
            raise UsageError(
                "the onnxruntime extractor needs ONNX Runtime: pip install 'edge[station]'"
            ) from None
        if tensorrt and input_hw is None:
            raise UsageError("the tensorrt extractor needs a fixed input size (centre crop or squash)")
        self.runtime = onnxruntime
        self.tensorrt = tensorrt
        self.name = "tensorrt" if tensorrt else f"onnxruntime-{self.device.type}"
        self.input_hw = (int(input_hw[0]), int(input_hw[1])) if input_hw is not None else None
        if self.input_hw is not None:
            self.runner(self.input_hw)

    @property
    def path(self) -> Path | None:
        """The graph that serves the size given at construction."""
        return self.graph(self.input_hw) if self.input_hw is not None else None

    def graph(self, input_hw: tuple[int, int] | None) -> Path:
        if not self.tensorrt or input_hw is None:
            return super().graph(input_hw)
        path = self.path_for(input_hw)  # TensorRT: a graph of its one fixed size
        if not path.is_file():
            export_onnx(self.backbone, input_hw, path)
        return path

    def runner(self, input_hw: tuple[int, int]) -> Runner:
        if self.tensorrt and self.runners and input_hw not in self.runners:
            raise UsageError(f"the tensorrt extractor runs one input size, {self.input_hw}; got {input_hw}")
        return super().runner(input_hw)

    def _open(self, path: Path, input_hw: tuple[int, int] | None) -> Runner:
        options = self.runtime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # idle threads sleep rather than spin: the search and the other station processes need the cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        # no arena: activations go back to the allocator after each run instead of staying
        # reserved at their peak (bottle fit: 1.65 GB peak with the arena, under 1.5 GB without)
        options.enable_cpu_mem_arena = False
        if input_hw is not None:
            options.add_free_dimension_override_by_name("height", input_hw[0])
            options.add_free_dimension_override_by_name("width", input_hw[1])
        session = self.runtime.InferenceSession(str(path), options, providers=self._providers(input_hw))

        def run(pixels: np.ndarray) -> np.ndarray:
            return session.run(None, {"frames": pixels})[0]

        return run

    def _providers(self, input_hw: tuple[int, int] | None) -> list:
        available = self.runtime.get_available_providers()
        if self.tensorrt:
            if "TensorrtExecutionProvider" not in available or self.device.type != "cuda":
                raise UsageError(
                    "the tensorrt extractor needs a CUDA GPU and ONNX Runtime with TensorRT "
                    "(onnxruntime-gpu and the TensorRT libraries: pip install 'edge[gpu]')"
                )
            assert input_hw is not None  # TensorRT compiles its one fixed size
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


class OpenVinoExtractor(GraphExtractor):
    """OpenVINO on the CPU: the exported graph read once, compiled once per input size it meets,
    in fp32 unless bf16 is asked for (a bf16-capable CPU would otherwise run bf16: parity first;
    bf16 extracts 1.5x faster on AMX but moved KolektorSDD's PRO by -0.014, docs/decisions.md).
    Frames run one at a time on a compilation for batch 1 and one fixed size: at 320² that was
    1.3-1.5x faster per image than batches of 8 on a compilation with a free batch (the
    activations of one frame stay in the caches), and it holds about 20 MB per size instead of 180
    (docs/decisions.md)."""

    def __init__(
        self, backbone: Backbone, cache_dir: Path, device: str = "cpu", precision: str = "fp32"
    ) -> None:
        if torch_device(device).type != "cpu":
            raise UsageError("the openvino extractor runs on the CPU here; use torch or tensorrt on CUDA")
        if precision not in ("fp32", "bf16"):
            raise UsageError(f"the openvino extractor runs in fp32 or bf16, not {precision}")
        super().__init__(backbone, cache_dir, device)
        self.precision = precision
        try:
            import openvino
        except ImportError:
            raise UsageError("the openvino extractor needs OpenVINO: pip install 'edge[station]'") from None
        self.openvino = openvino
        self.core = openvino.Core()
        self.name = "openvino-cpu" + ("" if precision == "fp32" else f"-{precision}")
        self.models: dict[Path, Any] = {}

    def _open(self, path: Path, input_hw: tuple[int, int] | None) -> Runner:
        model = self.models.get(path)
        if model is None:
            model = self.models[path] = self.core.read_model(str(path))
        settings: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            "INFERENCE_PRECISION_HINT": "f32" if self.precision == "fp32" else "bf16",
            "PERFORMANCE_HINT": "LATENCY",
        }
        if input_hw is None:  # kernels are not kept per shape: 270 MB instead of 445 MB after 30 sizes,
            settings["CPU_RUNTIME_CACHE_CAPACITY"] = 0  # no slower (176 against 196 ms per batch of 8)
            compiled = self.core.compile_model(model, "CPU", settings)
        else:
            sized = model.clone()
            sized.reshape({"frames": self.openvino.PartialShape([1, input_hw[0], input_hw[1], 3])})
            compiled = self.core.compile_model(sized, "CPU", settings)

        def run(pixels: np.ndarray) -> np.ndarray:  # each result a copy: the request's buffer is reused
            return np.concatenate([compiled(pixels[i : i + 1])[0] for i in range(len(pixels))])

        return run


def build_extractor(
    backbone: Backbone,
    kind: str = "auto",
    device: str = "cpu",
    input_hw: tuple[int, int] | None = None,
    cache_dir: Path | None = None,
    precision: str = "fp32",
) -> Extractor:
    """The extractor `kind` names (`auto`: see auto_runtime). `input_hw` None means inputs of any
    size (whole frames); a fixed one is compiled at once."""
    if kind not in EXTRACTORS:
        raise UsageError(f"unknown extractor {kind!r}; choose one of {', '.join(EXTRACTORS)}")
    if kind == "auto":
        kind = auto_runtime(backbone.spec.name, device, precision)
    if kind == "torch":
        return TorchExtractor(backbone, device, precision)
    if kind == "onnxruntime" and precision != "fp32":
        raise UsageError(f"the onnxruntime extractor runs in fp32; {precision}: torch on CUDA, or openvino")
    cache = cache_dir or default_cache_dir()
    if kind == "openvino":
        extractor: GraphExtractor = OpenVinoExtractor(backbone, cache, device, precision)
        if input_hw is not None:
            extractor.runner((int(input_hw[0]), int(input_hw[1])))
        return extractor
    return OnnxExtractor(backbone, input_hw, cache, device, tensorrt=kind == "tensorrt")


def auto_runtime(backbone: str, device: str, precision: str = "fp32") -> str:
    """The runtime `auto` picks, logged with its reason: on the CPU the first installed of the
    backbone's order in AUTO_CPU_RUNTIMES (measured fastest first, docs/engine.md), on CUDA torch."""
    if torch_device(device).type != "cpu" or precision == "fp16":
        return "torch"  # (which refuses fp16 on the CPU with its reason)
    if precision == "bf16":
        return "openvino" if _installed("openvino") else "torch"
    order = AUTO_CPU_RUNTIMES.get(backbone, AUTO_CPU_RUNTIMES["default"])
    installed = [kind for kind in order if kind == "torch" or _installed(kind)]
    chosen = installed[0]
    log.info("extractor auto: %s for %s on the CPU (measured order %s; installed: %s)", chosen, backbone,
             " > ".join(order), ", ".join(installed))  # fmt: skip
    return chosen


def _installed(kind: str) -> bool:
    modules = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}[kind]
    return all(importlib.util.find_spec(module) is not None for module in modules)


def default_cache_dir() -> Path:
    """Where exported graphs and engines live when no bank folder is given."""
    root = os.environ.get("EDGE_CACHE_DIR") or os.environ.get("CACHE_DIRECTORY")
    if root:
        return Path(root.split(":")[0])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge"
