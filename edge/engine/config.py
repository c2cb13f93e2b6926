"""Engine configuration: everything that decides a fitted model's numbers, and nothing else."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edge.errors import UsageError

SEARCH_BACKENDS = ("torch", "faiss")
SEARCH_PRECISIONS = ("auto", "fp32", "bf16")
EXTRACTORS = ("auto", "torch", "onnxruntime", "tensorrt")
EXTRACTOR_PRECISIONS = ("fp32", "fp16", "bf16")  # fp16 and bf16: the torch extractor on CUDA


@dataclass(frozen=True)
class InputGeometry:
    """How a frame becomes the network input.

    `crop` set: the paper's protocol, shorter side resized to `resize`, then a centre crop of
    `crop` x `crop` (a defect near the frame's edge can be cut away).
    `crop` None: the whole frame (or `roi`), shorter side resized to `resize`, aspect kept.
    `roi` is (x, y, width, height) in frame pixels, applied before anything else.
    """

    resize: int = 256
    crop: int | None = 224
    roi: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if not 32 <= self.resize <= 1024:
            raise UsageError(f"input resize must lie in [32, 1024] pixels, got {self.resize}")
        if self.crop is not None and not 32 <= self.crop <= self.resize:
            raise UsageError(f"crop must lie in [32, resize={self.resize}], got {self.crop}")
        if self.roi is not None and (len(self.roi) != 4 or min(self.roi[2:]) <= 0 or min(self.roi[:2]) < 0):
            raise UsageError(f"roi must be (x, y, width, height) with positive size, got {self.roi}")

    @property
    def mode(self) -> str:
        return "full_frame" if self.crop is None else "center_crop"

    @classmethod
    def full_frame(cls, size: int = 224, roi: tuple[int, int, int, int] | None = None) -> InputGeometry:
        return cls(resize=size, crop=None, roi=roi)


@dataclass(frozen=True)
class EngineConfig:
    """PatchCore settings. Defaults follow the paper except where a measured figure says otherwise."""

    backbone: str = "efficientnet_lite0"
    geometry: InputGeometry = field(default_factory=InputGeometry)
    coreset_fraction: float = 0.01
    projection_dim: int = 128
    seed: int = 0
    reweight: bool = True
    reweight_neighbours: int = 9
    search: str = "torch"
    search_precision: str = "auto"  # torch search: bf16 candidates + exact rescoring where the CPU has bf16
    device: str = "cpu"
    batch_size: int = 8
    extractor: str = "auto"  # auto, torch, onnxruntime, tensorrt (edge.engine.extractors)
    extractor_precision: str = "fp32"  # torch on CUDA: fp16 or bf16 too

    def __post_init__(self) -> None:
        if not 0.0 < self.coreset_fraction <= 1.0:
            raise UsageError(f"coreset fraction must lie in (0, 1], got {self.coreset_fraction}")
        if self.projection_dim < 1:
            raise UsageError(f"projection dimension must be positive, got {self.projection_dim}")
        if self.reweight_neighbours < 2:
            raise UsageError(f"eq. 7 needs at least 2 neighbours, got {self.reweight_neighbours}")
        if self.search not in SEARCH_BACKENDS:
            raise UsageError(f"unknown search backend {self.search!r}; choose {', '.join(SEARCH_BACKENDS)}")
        if self.search_precision not in SEARCH_PRECISIONS:
            raise UsageError(
                f"unknown search precision {self.search_precision!r}; choose {', '.join(SEARCH_PRECISIONS)}"
            )
        if self.extractor not in EXTRACTORS:
            raise UsageError(f"unknown extractor {self.extractor!r}; choose one of {', '.join(EXTRACTORS)}")
        if self.extractor_precision not in EXTRACTOR_PRECISIONS:
            raise UsageError(
                f"extractor precision must be fp32, fp16 or bf16, got {self.extractor_precision!r}"
            )
        if self.batch_size < 1:
            raise UsageError(f"batch size must be positive, got {self.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
