"""Engine configuration: everything that decides a fitted model's numbers, and nothing else.

Each setting is declared once, here, as an `EngineConfig` field whose metadata (a `Setting`)
carries its help text, its choices or bounds and whether it is fixed at fit time or chosen per
station at load time. Everything else is derived from it: validation below, `RUNTIME_SETTINGS`,
edge-eval's and edge-calibrate's options (edge/options.py) and the station file's types and
defaults (edge/config.py); tests/unit/test_settings.py holds them to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from typing import Any

from edge.engine.input_geometry import InputGeometry, resolve
from edge.errors import UsageError

# the backbones edge builds (edge.engine.backbones holds one builder per name)
BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "wide_resnet50_2")
ENSEMBLE_SEPARATOR = "+"  # "efficientnet_lite0+efficientnet_lite1": one trunk running both


@dataclass(frozen=True)
class Setting:
    """What one EngineConfig field means to a user, said once."""

    help: str
    choices: tuple[str, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()  # old names still read, as (old, new)
    runtime: bool = False  # a station may choose it at load time; else it is fixed when fitting
    above: float | None = None  # values must be greater than this
    minimum: float | None = None  # ... at least this
    maximum: float | None = None  # ... at most this
    flag: str = ""  # the command-line option where it is not --field-name

    @property
    def accepted(self) -> tuple[str, ...]:
        """The choices and the old names that still read as one of them."""
        return self.choices + tuple(old for old, _ in self.aliases)

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed, or None."""
        if self.choices and value not in self.choices:
            return f"choose one of {', '.join(self.choices)}, got {value!r}"
        if self.above is not None and not value > self.above:
            return f"must be greater than {self.above}, got {value}"
        if self.minimum is not None and value < self.minimum:
            return f"must be at least {self.minimum}, got {value}"
        if self.maximum is not None and value > self.maximum:
            return f"must be at most {self.maximum}, got {value}"
        return None


def setting(default: Any = MISSING, *, default_factory: Any = MISSING, **meaning: Any) -> Any:
    """A dataclass field with its `Setting`."""
    return field(default=default, default_factory=default_factory, metadata={"setting": Setting(**meaning)})


def backbone_name(name: str) -> str:
    """`name` if it names a backbone or an ensemble of distinct ones, else UsageError (argparse
    shows its message)."""
    names = name.split(ENSEMBLE_SEPARATOR)
    if any(n not in BACKBONES for n in names) or len(set(names)) != len(names):
        raise UsageError(
            f"unknown backbone {name!r}: one of {', '.join(BACKBONES)}, or distinct ones joined by "
            f"{ENSEMBLE_SEPARATOR}"
        )
    return name


@dataclass(frozen=True)
class EngineConfig:
    """PatchCore settings. Defaults follow the paper except where a measured figure says otherwise."""

    backbone: str = setting(
        "efficientnet_lite0",
        help=f"one of {', '.join(BACKBONES)}, or several joined by {ENSEMBLE_SEPARATOR} for an ensemble",
    )
    geometry: InputGeometry = setting(
        default_factory=InputGeometry.auto,
        help="how a frame becomes the network input (edge.engine.input_geometry)",
    )
    coreset_fraction: float = setting(
        0.01, help="share of training patches kept in the bank; 0.01 is PatchCore-1%", above=0.0, maximum=1.0,
        flag="--coreset",
    )  # fmt: skip
    projection_dim: int = setting(128, help="projection width for coreset selection", minimum=1)
    projection: str = setting(
        "pca",
        help="how features are projected for coreset selection: pca (principal axes of a sample of "
        "the training patches; steadier across seeds) or random (Gaussian, the paper's)",
        choices=("random", "pca"),
    )
    seed: int = setting(0, help="seed of the coreset's projection and start")
    fit_chunk_rows: int = setting(
        0,
        help="patches a fit holds before it reduces them to 4x their share of the bank, so that its "
        "memory stops growing with the good frames (e.g. 262144: about 0.5 GB); 0: never reduce, "
        "the bank chosen from every patch at once (docs/engine.md, 'A fit in bounded memory')",
        minimum=0,
    )
    image_score: str = setting(
        "map_max",
        help="map_max: the peak of the smoothed anomaly map (steadier across coreset seeds); eq7: the "
        "largest patch distance with the paper's eq. 7",
        choices=("map_max", "eq7"),
    )
    reweight: bool = setting(True, help="eq. 7's factor on the eq7 image score", flag="--no-reweight")
    reweight_neighbours: int = setting(9, help="bank rows eq. 7 weighs (itself and its nearest)", minimum=2)
    search: str = setting(
        "auto",
        help="nearest-neighbour search: projected (candidates on the bank's principal axes, measured "
        "exactly), exact, or faiss's flat index; auto: projected on the CPU, exact on a GPU",
        choices=("auto", "projected", "exact", "faiss"),
        aliases=(("torch", "exact"),),  # the exact search's name before there was a choice
        runtime=True,
    )
    search_precision: str = setting(
        "auto",
        help="search products: bf16 finds candidates that fp32 then measures exactly (auto: bf16 "
        "where the CPU multiplies bf16 natively, else fp32)",
        choices=("auto", "fp32", "bf16"),
        runtime=True,
    )
    device: str = setting("cpu", help="torch device (cpu, cuda, cuda:1)", runtime=True)
    batch_size: int = setting(8, help="images per extractor call", minimum=1, runtime=True)
    extractor: str = setting(
        "auto",
        help="feature extraction runtime (auto: on the CPU the installed runtime measured fastest for "
        "the backbone, OpenVINO for EfficientNet-Lite; torch on CUDA; tensorrt needs a fixed input "
        "size, a GPU and edge[gpu])",
        choices=("auto", "torch", "openvino", "onnxruntime", "tensorrt"),
        runtime=True,
    )
    extractor_precision: str = setting(
        "fp32",
        help="fp16 and bf16: the torch extractor on CUDA; bf16 also OpenVINO on the CPU (1.5x faster "
        "extraction where the CPU multiplies bf16 natively; measured accuracy in docs/decisions.md)",
        choices=("fp32", "fp16", "bf16"),
        runtime=True,
    )

    def __post_init__(self) -> None:
        backbone_name(self.backbone)
        for name, meaning in SETTINGS.items():
            value = dict(meaning.aliases).get(getattr(self, name), getattr(self, name))
            object.__setattr__(self, name, value)
            problem = meaning.problem(value)
            if problem:
                raise UsageError(f"{name.replace('_', ' ')}: {problem}")

    def resolved(self, frame_hws: Sequence[tuple[int, int]]) -> EngineConfig:
        """This configuration with an `auto` geometry made concrete from training frame sizes."""
        return replace(self, geometry=resolve(self.geometry, frame_hws))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _declared(f: Field) -> Setting:
    return f.metadata["setting"]


SETTINGS: dict[str, Setting] = {f.name: _declared(f) for f in fields(EngineConfig)}
DEFAULTS = EngineConfig()
RUNTIME_SETTINGS = tuple(name for name, meaning in SETTINGS.items() if meaning.runtime)
# the choices other modules check against
SEARCH_BACKENDS = SETTINGS["search"].choices
SEARCH_PRECISIONS = SETTINGS["search_precision"].choices
EXTRACTORS = SETTINGS["extractor"].choices
EXTRACTOR_PRECISIONS = SETTINGS["extractor_precision"].choices
PROJECTIONS = SETTINGS["projection"].choices
IMAGE_SCORES = SETTINGS["image_score"].choices
