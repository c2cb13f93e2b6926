"""Engine configuration: everything that decides a fitted model's numbers, and nothing else."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from edge.errors import UsageError

# auto: projected on the CPU (candidates on principal axes, measured exactly), exact on a GPU;
# "torch", the exact search's name before there was a choice, is read as exact
SEARCH_BACKENDS = ("auto", "projected", "exact", "faiss")
SEARCH_PRECISIONS = ("auto", "fp32", "bf16")
EXTRACTORS = ("auto", "torch", "openvino", "onnxruntime", "tensorrt")
EXTRACTOR_PRECISIONS = ("fp32", "fp16", "bf16")  # fp16 and bf16: the torch extractor on CUDA
PROJECTIONS = ("random", "pca")
IMAGE_SCORES = ("map_max", "eq7")  # docs/engine.md: map_max is the steadier across coreset seeds


GEOMETRY_MODES = ("auto", "center_crop", "full_frame", "area", "squash")
DEFAULT_SIZES = {"center_crop": 256, "full_frame": 224, "area": 224, "squash": 224}  # `resize` by mode


@dataclass(frozen=True)
class InputGeometry:
    """How a frame (or its `roi`, (x, y, width, height) in frame pixels, applied first) becomes the
    network input.

    - `center_crop`: the paper's protocol: shorter side resized to `resize`, then a centre crop of
      `crop` x `crop` (a defect near the frame's edge can be cut away).
    - `full_frame`: the whole frame, aspect kept, shorter side resized to `resize`.
    - `area`: the whole frame, aspect kept, scaled to about `resize`² pixels (sides multiples of
      16): every frame costs the same and gives the same number of patches, whatever its shape.
    - `squash`: the whole frame resized to `resize` x `resize`, aspect not kept.
    - `auto`: chosen when a bank is fitted, from its training frames (`geometry.resolve`): `area`
      at the frames' own pixel count, within bounds. A fitted bank never holds `auto`.
    """

    resize: int = 256
    crop: int | None = 224
    roi: tuple[int, int, int, int] | None = None
    mode: str = ""  # empty: center_crop when `crop` is set, else full_frame (banks before modes)

    def __post_init__(self) -> None:
        if not self.mode:
            object.__setattr__(self, "mode", "full_frame" if self.crop is None else "center_crop")
        if self.mode not in GEOMETRY_MODES:
            raise UsageError(f"unknown geometry {self.mode!r}; choose one of {', '.join(GEOMETRY_MODES)}")
        if self.mode != "center_crop":
            object.__setattr__(self, "crop", None)
        if not 32 <= self.resize <= 1024:
            raise UsageError(f"input resize must lie in [32, 1024] pixels, got {self.resize}")
        if self.mode == "center_crop" and (self.crop is None or not 32 <= self.crop <= self.resize):
            raise UsageError(f"crop must lie in [32, resize={self.resize}], got {self.crop}")
        if self.roi is not None and (len(self.roi) != 4 or min(self.roi[2:]) <= 0 or min(self.roi[:2]) < 0):
            raise UsageError(f"roi must be (x, y, width, height) with positive size, got {self.roi}")

    @property
    def fixed_input_hw(self) -> tuple[int, int] | None:
        """The network input's size when it does not depend on the frame's shape."""
        if self.mode == "center_crop" and self.crop is not None:
            return self.crop, self.crop
        if self.mode == "squash":
            return self.resize, self.resize
        return None

    @classmethod
    def named(cls, mode: str, size: int | None = None) -> InputGeometry:
        """A geometry from a mode's name and optional size (DEFAULT_SIZES otherwise)."""
        if mode == "auto":
            return cls.auto()
        if mode not in DEFAULT_SIZES:
            raise UsageError(f"unknown geometry {mode!r}; choose one of {', '.join(GEOMETRY_MODES)}")
        return cls(resize=size or DEFAULT_SIZES[mode], crop=224, mode=mode)

    @classmethod
    def auto(cls, roi: tuple[int, int, int, int] | None = None) -> InputGeometry:
        return cls(crop=None, roi=roi, mode="auto")

    @classmethod
    def full_frame(cls, size: int = 224, roi: tuple[int, int, int, int] | None = None) -> InputGeometry:
        return cls(resize=size, crop=None, roi=roi, mode="full_frame")


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
        from edge.engine.geometry import resolve

        return replace(self, geometry=resolve(self.geometry, frame_hws))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
