"""Engine configuration: everything that decides a fitted model's numbers, and nothing else."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from edge.engine.input_geometry import InputGeometry, resolve
from edge.errors import UsageError

# auto: projected on the CPU (candidates on principal axes, measured exactly), exact on a GPU;
# "torch", the exact search's name before there was a choice, is read as exact
SEARCH_BACKENDS = ("auto", "projected", "exact", "faiss")
SEARCH_PRECISIONS = ("auto", "fp32", "bf16")
EXTRACTORS = ("auto", "torch", "openvino", "onnxruntime", "tensorrt")
EXTRACTOR_PRECISIONS = ("fp32", "fp16", "bf16")  # fp16 and bf16: the torch extractor on CUDA
PROJECTIONS = ("random", "pca")
IMAGE_SCORES = ("map_max", "eq7")  # docs/engine.md: map_max is the steadier across coreset seeds


@dataclass(frozen=True)
class EngineConfig:
    """PatchCore settings. Defaults follow the paper except where a measured figure says otherwise."""

    backbone: str = "efficientnet_lite0"
    geometry: InputGeometry = field(default_factory=InputGeometry.auto)
    coreset_fraction: float = 0.01
    projection_dim: int = 128
    projection: str = "pca"  # coreset selection's: pca (steadier across seeds) or random (the paper's)
    seed: int = 0
    image_score: str = "map_max"  # map_max: smoothed map's peak (steadier); eq7: the paper's score
    reweight: bool = True
    reweight_neighbours: int = 9
    search: str = "auto"  # auto, projected, exact, faiss (edge.engine.search)
    search_precision: str = "auto"  # products in bf16 where the CPU has bf16; candidates measured in fp32
    device: str = "cpu"
    batch_size: int = 8
    extractor: str = "auto"  # auto, torch, openvino, onnxruntime, tensorrt (edge.engine.extractors)
    extractor_precision: str = "fp32"  # torch on CUDA: fp16 or bf16 too

    def __post_init__(self) -> None:
        if not 0.0 < self.coreset_fraction <= 1.0:
            raise UsageError(f"coreset fraction must lie in (0, 1], got {self.coreset_fraction}")
        if self.projection_dim < 1:
            raise UsageError(f"projection dimension must be positive, got {self.projection_dim}")
        if self.projection not in PROJECTIONS:
            raise UsageError(f"unknown projection {self.projection!r}; choose {', '.join(PROJECTIONS)}")
        if self.image_score not in IMAGE_SCORES:
            raise UsageError(f"unknown image score {self.image_score!r}; choose {', '.join(IMAGE_SCORES)}")
        if self.reweight_neighbours < 2:
            raise UsageError(f"eq. 7 needs at least 2 neighbours, got {self.reweight_neighbours}")
        if self.search == "torch":
            object.__setattr__(self, "search", "exact")
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

    def resolved(self, frame_hws: Sequence[tuple[int, int]]) -> EngineConfig:
        """This configuration with an `auto` geometry made concrete from training frame sizes."""
        return replace(self, geometry=resolve(self.geometry, frame_hws))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
