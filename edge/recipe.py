"""A recipe as plain data: one product's name, the frame size its regions are drawn for, and its
regions with their rules; the limits on them, the checks a polygon must pass, and a region's pixels.

The station file's schema (edge/config.py) builds these from its sections and checks them with the
functions here, which need neither OpenCV nor numpy, so that a bad region is refused with one line
wherever the file is read (the operator's page has no OpenCV). Drawing a region (the station's
check that no inspect region is wholly ignored, and the judging in edge/pipeline/judgement.py)
imports them when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

DEFAULT_RECIPE = "default"  # the one recipe of a station configured with `bank` alone
MAX_RECIPES = 256  # products per station
MAX_REGIONS = 64  # regions per recipe
MAX_POLYGON_POINTS = 256
SCALE_ASPECT_TOLERANCE = 0.1  # `fit: scale`: a frame's aspect ratio may differ this much (relative)

Corner = Sequence[int]


@dataclass(frozen=True)
class Region:
    """A named part of the frame in frame pixels: `inspect` (judged by its rule) or `ignore`."""

    name: str
    mode: str  # inspect or ignore
    corners: tuple[tuple[int, int], ...]  # the outline, in frame pixels
    rect: tuple[int, int, int, int] | None = None  # [x, y, width, height] when drawn as a rectangle
    threshold: float | None = None
    sensitivity: float | None = None
    min_area_px: int = 0
    min_area_mm2: float | None = None
    mask: str | None = None  # a PNG of the frame size whose non-zero pixels are the region


@dataclass(frozen=True)
class Registration:
    """Regions that follow the part: each frame registered against `reference` (the frame the
    regions are drawn on), a frame that cannot be answered ERROR (`on_failure` error) or NOK."""

    reference: str  # a PNG file
    max_turn_deg: float = 15.0
    min_confidence: float = 0.7
    on_failure: str = "error"


@dataclass(frozen=True)
class Recipe:
    name: str
    frame_hw: tuple[int, int] | None = None  # the frame size the regions are drawn for
    regions: tuple[Region, ...] = ()
    registration: Registration | None = None
    scales: bool = False  # frames of another size (of nearly the same shape) get the regions scaled


def recipe_digest(recipe: Recipe) -> str:
    """What a region threshold was calibrated for: the frame size, the regions' names, kinds and
    outlines, and the registration (not the rules: a rule does not move a region's peaks)."""
    import hashlib
    import json

    moving = recipe.registration
    facts = {
        "frame_hw": recipe.frame_hw,
        "regions": [_region_facts(region) for region in recipe.regions],
        "registration": None
        if moving is None
        else [moving.reference, moving.max_turn_deg, moving.min_confidence],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def _region_facts(region: Region) -> tuple:
    """What a region's place is: its name, kind and outline, and a mask file's contents."""
    import hashlib

    facts: tuple = (region.name, region.mode, [list(c) for c in region.corners])
    if region.mask is None:
        return facts  # as before masks existed: calibrated thresholds stay valid
    try:
        with open(region.mask, "rb") as file:
            return (*facts, hashlib.sha256(file.read()).hexdigest())
    except OSError:
        return (*facts, None)


def rect_corners(x: int, y: int, width: int, height: int) -> tuple[tuple[int, int], ...]:
    return ((x, y), (x + width, y), (x + width, y + height), (x, y + height))


def _orientation(a: Corner, b: Corner, c: Corner) -> int:
    """Sign of the turn a → b → c: 1 left, -1 right, 0 straight (integer arithmetic: exact)."""
    cross = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
    return (cross > 0) - (cross < 0)


def _on_segment(a: Corner, b: Corner, p: Corner) -> bool:
    return min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])


def segments_meet(a: Corner, b: Corner, c: Corner, d: Corner) -> bool:
    """Whether the closed segments ab and cd share a point."""
    o1, o2, o3, o4 = (
        _orientation(a, b, c),
        _orientation(a, b, d),
        _orientation(c, d, a),
        _orientation(c, d, b),
    )
    if o1 != o2 and o3 != o4:
        return True
    return (
        (o1 == 0 and _on_segment(a, b, c))
        or (o2 == 0 and _on_segment(a, b, d))
        or (o3 == 0 and _on_segment(c, d, a))
        or (o4 == 0 and _on_segment(c, d, b))
    )


def polygon_crosses_itself(corners: Sequence[Corner]) -> bool:
    """True when two edges that are not neighbours meet, or neighbours overlap (a polygon whose
    inside is not well defined: the fill rule would decide which pixels it covers), or the outline
    encloses no area."""
    count = len(corners)
    edges = [(corners[i], corners[(i + 1) % count]) for i in range(count)]
    for i in range(count):
        for j in range(i + 1, count):
            neighbours = j == i + 1 or (i == 0 and j == count - 1)
            if neighbours:
                shared = edges[i][1] if j == i + 1 else edges[i][0]
                other_i = edges[i][0] if j == i + 1 else edges[i][1]
                other_j = edges[j][1] if j == i + 1 else edges[j][0]
                # neighbours meet at their shared corner only, unless they fold back on each other
                folded = _orientation(other_i, shared, other_j) == 0 and (
                    _on_segment(shared, other_i, other_j) or _on_segment(shared, other_j, other_i)
                )
                if folded:
                    return True
            elif segments_meet(*edges[i], *edges[j]):
                return True
    return polygon_area(corners) == 0


def polygon_area(corners: Sequence[Corner]) -> float:
    """The enclosed area (shoelace), in square pixels."""
    count = len(corners)
    twice = sum(
        corners[i][0] * corners[(i + 1) % count][1] - corners[(i + 1) % count][0] * corners[i][1]
        for i in range(count)
    )
    return abs(twice) / 2


def frame_mask(
    region: Region, frame_hw: tuple[int, int], drawn_hw: tuple[int, int] | None = None
) -> np.ndarray:
    """The region's pixels in a frame of `frame_hw`, as a uint8 0/1 mask; drawn for a frame of
    `drawn_hw` (default: the same size), it is scaled to this one."""
    import cv2
    import numpy as np

    if region.mask is not None:
        drawn = read_mask(region.mask)
        if drawn.shape != frame_hw:
            drawn = cv2.resize(drawn, (frame_hw[1], frame_hw[0]), interpolation=cv2.INTER_NEAREST)
        return drawn
    mask = np.zeros(frame_hw, np.uint8)
    sy, sx = (1.0, 1.0) if drawn_hw is None else (frame_hw[0] / drawn_hw[0], frame_hw[1] / drawn_hw[1])
    if region.rect is not None:
        x, y, w, h = region.rect
        mask[round(y * sy) : round((y + h) * sy), round(x * sx) : round((x + w) * sx)] = 1
    else:
        corners = np.array([(x * sx, y * sy) for x, y in region.corners])
        cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1)
    return mask


def read_mask(path: str) -> np.ndarray:
    """A mask file as a uint8 0/1 array (ValueError when it is not an image)."""
    import cv2
    import numpy as np

    image = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError(f"{path} is not an image")
    return (image > 0).astype(np.uint8)


def aspect_fits(frame_hw: tuple[int, int], drawn_hw: tuple[int, int]) -> bool:
    """A frame nearly the shape regions were drawn for (`fit: scale`)."""
    frame, drawn = frame_hw[1] / frame_hw[0], drawn_hw[1] / drawn_hw[0]
    return abs(frame / drawn - 1) <= SCALE_ASPECT_TOLERANCE


def region_problems(recipe: Recipe) -> list[str]:
    """What the schema cannot see without drawing or reading: an inspect region wholly ignored (or,
    with ignore regions only, nothing left to inspect), a registration reference of another size."""
    import numpy as np

    problems = _reference_problems(recipe)
    if not recipe.regions:
        return problems
    assert recipe.frame_hw is not None
    frame_hw = recipe.frame_hw
    masks = _mask_problems(recipe)
    if masks:
        return problems + masks
    ignored = np.zeros(frame_hw, np.uint8)
    for region in recipe.regions:
        if region.mode == "ignore":
            ignored |= frame_mask(region, frame_hw)
    inspect = [r for r in recipe.regions if r.mode == "inspect"]
    for region in inspect:
        if not (frame_mask(region, frame_hw) & (1 - ignored)).any():
            problems.append(f"recipe {recipe.name}: region {region.name} is empty without its ignored parts")
    if not inspect and ignored.all():
        problems.append(f"recipe {recipe.name}: the ignore regions cover the whole frame: nothing is judged")
    return problems


def _mask_problems(recipe: Recipe) -> list[str]:
    """A mask region whose file is no image of the recipe's frame size, or marks no pixel."""
    problems = []
    for region in recipe.regions:
        if region.mask is None:
            continue
        where = f"recipe {recipe.name}: region {region.name}: mask {region.mask}"
        try:
            mask = read_mask(region.mask)
        except ValueError:
            problems.append(f"{where} is not an image")
            continue
        assert recipe.frame_hw is not None
        if mask.shape != recipe.frame_hw:
            height, width = mask.shape
            problems.append(f"{where} is {width}x{height}, the regions are drawn for "
                            f"{recipe.frame_hw[1]}x{recipe.frame_hw[0]}")  # fmt: skip
        elif not mask.any():
            problems.append(f"{where} marks no pixel (non-zero pixels are the region)")
    return problems


def _reference_problems(recipe: Recipe) -> list[str]:
    """A registration reference that does not read as an image of the recipe's frame size."""
    if recipe.registration is None:
        return []
    import cv2

    path = recipe.registration.reference
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        return [f"recipe {recipe.name}: registration.reference {path} is not an image"]
    if recipe.frame_hw is not None and image.shape[:2] != recipe.frame_hw:
        return [
            f"recipe {recipe.name}: registration.reference {path} is {image.shape[1]}x{image.shape[0]}, "
            f"the regions are drawn for {recipe.frame_hw[1]}x{recipe.frame_hw[0]}"
        ]
    return []
