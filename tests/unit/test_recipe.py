"""Recipes: regions and rules refused with one line when wrong, and judged as drawn on real maps of
the fitted synthetic model (defects inside an ignore region never reject; a defect names its
region, area and box; the minimum size decides; ignored patches are not searched)."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
import yaml

from edge.bridges.vision_state import vision_state
from edge.config import check_station, parse_config
from edge.errors import ConfigError
from edge.imageio import read_image
from edge.pipeline.inspection import Bank, RecipeBook, inspect
from edge.pipeline.judgement import RecipeRegions
from edge.protocol import FrameHeader, Verdict
from edge.recipe import Recipe, Region, Registration, frame_mask, polygon_crosses_itself, rect_corners


def station(tmp_path, recipes: list[dict], cameras: list[dict] | None = None) -> dict:
    (tmp_path / "bank").mkdir(exist_ok=True)
    for recipe in recipes:
        recipe.setdefault("bank", {"path": str(tmp_path / "bank")})
    return {
        "station": "line1",
        "endpoints": {k: f"ipc://{tmp_path}/{k}" for k in ("frames", "results", "publish")},
        "cameras": cameras or [{"name": "cam0", "source": {"kind": "synthetic"}}],
        "recipes": recipes,
    }


def problems(raw: dict) -> str:
    with pytest.raises(ConfigError) as refused:
        parse_config(yaml.safe_dump(raw))
    return str(refused.value)


def recipe_with(*regions: dict, frame: dict | None = None) -> dict:
    return {"name": "bottle", "frame": frame or {"width": 160, "height": 160}, "regions": list(regions)}


SQUARE = {"name": "a", "rect": [0, 0, 5, 5]}


@pytest.mark.parametrize(
    ("region", "says"),
    [
        ({"name": "a", "rect": [150, 0, 20, 20]}, "region a leaves the 160x160 frame at [170, 0]"),
        ({"name": "a", "polygon": [[0, 0], [50, 50], [50, 0], [0, 50]]}, "region a: the polygon crosses"),
        ({"name": "a", "polygon": [[0, 0], [10, 10], [20, 20]]}, "region a: the polygon crosses itself"),
        ({"name": "a", "rect": [0, 0, 0, 5]}, "region a: rect width and height must be at least 1"),
        (SQUARE | {"polygon": [[0, 0], [5, 0], [5, 5]]}, "exactly one of rect, polygon or mask"),
        (SQUARE | {"min_area_px": -3}, "min_area_px: Input should be greater than or equal to 0"),
        (SQUARE | {"threshold": 2.0, "sensitivity": 2.0}, "threshold or sensitivity, not both"),
        (SQUARE | {"mode": "ignore", "min_area_px": 4}, "an ignore region has no rule"),
        (SQUARE | {"name": "a b"}, "name: expected 1 to 64 letters"),
    ],
)
def test_a_bad_region_is_one_line_naming_it(tmp_path, region, says):
    assert says in problems(station(tmp_path, [recipe_with(region)]))


def test_recipes_are_refused_as_a_whole_when_they_contradict(tmp_path):
    twice = recipe_with({"name": "a", "rect": [0, 0, 5, 5]}, {"name": "a", "rect": [9, 9, 5, 5]})
    assert "region names must be unique; repeated: ['a']" in problems(station(tmp_path, [twice]))
    unsized = {"name": "bottle", "regions": [{"name": "a", "rect": [0, 0, 5, 5]}]}
    assert "regions need frame" in problems(station(tmp_path, [unsized]))
    same = [{"name": "bottle", "number": 1}, {"name": "screw", "number": 1}]
    assert "recipe numbers must be unique; repeated: [1]" in problems(station(tmp_path, same))
    both = station(tmp_path, [{"name": "bottle"}]) | {"bank": {"path": str(tmp_path / "bank")}}
    assert "give bank (one product) or recipes" in problems(both)
    mm = recipe_with({"name": "a", "rect": [0, 0, 5, 5], "min_area_mm2": 0.5})
    assert "sets min_area_mm2, so every camera needs mm_per_px" in problems(station(tmp_path, [mm]))
    scaled = [{"name": "cam0", "source": {"kind": "synthetic"}, "mm_per_px": 0.1}]
    parse_config(yaml.safe_dump(station(tmp_path, [mm], scaled)))  # with a scale it reads
    moving = recipe_with(SQUARE, frame={"width": 160, "height": 160, "fit": "scale"})
    moving["registration"] = {"reference": str(tmp_path / "ref.png")}
    assert "a registered recipe's frames are its reference's size" in problems(station(tmp_path, [moving]))


OPCUA_FILES = {"certificate": "server.der", "private_key": "server.pem", "trust_dir": "trust"}


@pytest.mark.parametrize(
    ("bridges", "says"),
    [
        ({"modbus": {"plc": "127.0.0.1:502", "handshake_camera": "cam0"}}, "bridges.modbus.handshake_camera"),
        ({"opcua": OPCUA_FILES | {"job_camera": "cam0"}}, "bridges.opcua.job_camera"),
    ],
)
def test_a_bridge_that_triggers_parts_needs_a_triggered_camera(tmp_path, bridges, says):
    raw = station(tmp_path, [{"name": "bottle", "number": 1}])
    raw["bridges"] = bridges
    assert f"{says}: cam0 is not a triggered camera of this station" in problems(raw)
    raw["cameras"][0] |= {"trigger": "triggered", "trigger_endpoint": f"ipc://{tmp_path}/trig"}
    parse_config(yaml.safe_dump(raw))


def test_an_inspect_region_wholly_ignored_is_refused_by_the_check(tmp_path):
    covered = recipe_with(
        {"name": "seal", "rect": [10, 10, 20, 20]},
        {"name": "label", "mode": "ignore", "rect": [0, 0, 50, 50]},
    )
    config = parse_config(yaml.safe_dump(station(tmp_path, [covered])))
    with pytest.raises(ConfigError, match="recipe bottle: region seal is empty without its ignored parts"):
        check_station(config, bind=True)
    everything = recipe_with({"name": "all", "mode": "ignore", "rect": [0, 0, 160, 160]})
    config = parse_config(yaml.safe_dump(station(tmp_path, [everything])))
    with pytest.raises(ConfigError, match="the ignore regions cover the whole frame"):
        check_station(config, bind=True)


def test_at_cold_start_processes_without_a_bank_start_before_any_recipe_has_one(tmp_path):
    raw = station(tmp_path, [{"name": "bottle", "bank": {"path": str(tmp_path / "not-yet")}}])
    config = parse_config(yaml.safe_dump(raw))
    check_station(config, bank=False)  # capture and publisher run before edge-calibrate
    with pytest.raises(ConfigError, match=r"recipes\[0\]\.bank\.path: .*not-yet does not exist"):
        check_station(config)


def test_a_station_configured_with_bank_alone_has_the_one_recipe_default(tmp_path):
    raw = station(tmp_path, [])
    raw.pop("recipes")
    raw["bank"] = {"path": str(tmp_path / "bank")}
    config = parse_config(yaml.safe_dump(raw))
    assert [r.name for r in config.recipe_list] == ["default"]
    assert config.recipe().bank.path == str(tmp_path / "bank")
    with pytest.raises(ConfigError, match="no recipe named 'screw'"):
        config.recipe("screw")


def test_polygon_checks():
    assert not polygon_crosses_itself([(0, 0), (10, 0), (10, 10), (0, 10)])
    assert not polygon_crosses_itself([(0, 0), (10, 0), (5, 5), (10, 10), (0, 10)])  # concave
    assert polygon_crosses_itself([(0, 0), (10, 10), (10, 0), (0, 10)])  # a bow tie
    assert polygon_crosses_itself([(0, 0), (10, 0), (5, 0)])  # no area
    assert polygon_crosses_itself([(0, 0), (10, 0), (10, 10), (10, 5)])  # folds back on itself


# ---- judging on real maps ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene(fitted_model, synthetic_category):
    """A defective test frame with its ground truth, and a threshold above every good frame's score."""
    good = [read_image(s.path) for s in synthetic_category.test if s.label == 0]
    threshold = 1.02 * max(r.score for r in fitted_model.score(good))
    for sample in synthetic_category.test:
        if sample.label == 1:
            image = read_image(sample.path)
            truth = sample.mask(image.shape[:2])
            if truth.any() and fitted_model.score([image])[0].score > 1.2 * threshold:
                ys, xs = np.nonzero(truth)
                box = (
                    int(xs.min()),
                    int(ys.min()),
                    int(xs.max() - xs.min() + 1),
                    int(ys.max() - ys.min() + 1),
                )
                return image, box, threshold
    pytest.fail("no clearly detected defect in the synthetic test set")


def header(image: np.ndarray, frame_id: str = "f1", product: str | None = None) -> FrameHeader:
    return FrameHeader(
        station="line1", camera="cam0", seq=0, frame_id=frame_id, capture_utc="2026-12-07T00:00:00Z",
        capture_monotonic_ns=time.monotonic_ns(), height=image.shape[0], width=image.shape[1],
        channels=3, product=product,
    )  # fmt: skip


def region(name: str, box: tuple[int, int, int, int], mode: str = "inspect", **rule) -> Region:
    return Region(name, mode, rect_corners(*box), box, **rule)


def judged(model, image, threshold, *regions: Region, mm_per_px: float | None = None):
    recipe = Recipe("bottle", image.shape[:2], regions)
    bank = Bank(model, threshold, "b", "v1", recipe="bottle", regions=RecipeRegions(recipe, threshold))
    book = RecipeBook([bank], {"cam0": mm_per_px} if mm_per_px else None)
    return inspect([(header(image), image)], book)[0].verdict


def grown(box: tuple[int, int, int, int], by: int, limit: int) -> tuple[int, int, int, int]:
    x, y, w, h = box
    x0, y0 = max(0, x - by), max(0, y - by)
    return x0, y0, min(limit, x + w + by) - x0, min(limit, y + h + by) - y0


def test_without_regions_a_reject_names_its_defects_in_the_frame(fitted_model, scene):
    image, box, threshold = scene
    verdict = inspect([(header(image), image)], Bank(fitted_model, threshold, "b", "v1"))[0].verdict
    assert verdict.verdict == Verdict.NOK and verdict.recipe == "default" and verdict.region == "frame"
    assert verdict.reason == "defect"
    first = verdict.defects[0]
    assert first["region"] == "frame" and first["peak"] > threshold and first["area_px"] > 0
    x, y, w, h = first["box"]
    assert x < box[0] + box[2] and box[0] < x + w and y < box[1] + box[3] and box[1] < y + h  # on the defect


def test_a_defect_inside_an_ignore_region_does_not_reject_and_one_inspected_does(fitted_model, scene):
    image, box, threshold = scene
    side = image.shape[0]
    label = region("label", grown(box, 24, side), "ignore")
    assert judged(fitted_model, image, threshold, label).verdict == Verdict.OK
    seal = region("seal", grown(box, 4, side))
    verdict = judged(fitted_model, image, threshold, seal)
    assert verdict.verdict == Verdict.NOK and verdict.region == "seal"
    assert {d["region"] for d in verdict.defects} == {"seal"}
    elsewhere = region("rim", (0, 0, side, side))
    verdict = judged(fitted_model, image, threshold, elsewhere, label)
    assert verdict.verdict == Verdict.OK, "the rim holds no defect once the label is ignored"


def test_the_minimum_size_decides(fitted_model, scene):
    image, _, threshold = scene
    whole = (0, 0, image.shape[1], image.shape[0])
    found = judged(fitted_model, image, threshold, region("part", whole))
    largest = max(d["area_px"] for d in found.defects)
    assert (
        judged(fitted_model, image, threshold, region("part", whole, min_area_px=largest)).verdict
        == Verdict.NOK
    )
    small = judged(fitted_model, image, threshold, region("part", whole, min_area_px=largest + 1))
    assert small.verdict == Verdict.OK and not small.defects
    # the same rule in mm² at 0.1 mm per pixel: largest px is largest / 100 mm²
    in_mm = region("part", whole, min_area_mm2=(largest + 1) / 100)
    assert judged(fitted_model, image, threshold, in_mm, mm_per_px=0.1).verdict == Verdict.OK
    kept = judged(fitted_model, image, threshold, region("part", whole), mm_per_px=0.1)
    assert kept.defects[0]["area_mm2"] == pytest.approx(kept.defects[0]["area_px"] / 100)


def test_a_region_threshold_and_sensitivity(fitted_model, scene):
    image, _, threshold = scene
    whole = (0, 0, image.shape[1], image.shape[0])
    peak = judged(fitted_model, image, threshold, region("part", whole)).defects[0]["peak"]
    assert (
        judged(fitted_model, image, threshold, region("part", whole, threshold=peak * 1.01)).verdict
        == Verdict.OK
    )
    blunt = judged(
        fitted_model, image, threshold, region("part", whole, sensitivity=threshold / (peak * 1.01))
    )
    assert blunt.verdict == Verdict.OK


def test_ignored_patches_are_not_searched_and_judged_pixels_keep_their_values(fitted_model, scene):
    image = scene[0]
    judged_pixels = np.zeros(fitted_model.placement(image.shape[:2]).input_hw, bool)
    judged_pixels[: judged_pixels.shape[0] // 2] = True
    searched = []
    search = fitted_model.index.search

    def counting(queries, k=1):
        searched.append(len(queries))
        return search(queries, k)

    fitted_model.index.search = counting
    try:
        full = fitted_model.score([image])[0].anomaly_map
        half = fitted_model.score([image], judged=[judged_pixels])[0].anomaly_map
    finally:
        fitted_model.index.search = search
    assert searched[1] < searched[0]
    np.testing.assert_allclose(half[judged_pixels], full[judged_pixels], rtol=1e-5)


def test_a_frame_of_another_size_or_an_unknown_product_is_an_error_verdict(fitted_model, scene):
    image, _, threshold = scene
    recipe = Recipe("bottle", (100, 100), (region("part", (0, 0, 50, 50)),))
    bank = Bank(fitted_model, threshold, "b", "v1", recipe="bottle", regions=RecipeRegions(recipe, threshold))
    book = RecipeBook([bank])
    wrong = inspect([(header(image), image)], book)[0]
    assert (wrong.verdict.verdict, wrong.verdict.reason) == (Verdict.ERROR, "frame")
    assert "regions are drawn for 100x100 frames, this frame is 160x160" in (wrong.verdict.error or "")
    unknown = inspect([(header(image, product="screw"), image)], book)[0]
    assert (unknown.verdict.verdict, unknown.verdict.recipe, unknown.verdict.reason) == (
        Verdict.ERROR,
        "screw",
        "recipe",
    )
    assert unknown.verdict.error == "unknown recipe 'screw': this station's recipes are bottle"


def halved(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x, y, w, h = box
    return x // 2, y // 2, (x + w + 1) // 2 - x // 2, (y + h + 1) // 2 - y // 2


def test_with_fit_scale_regions_drawn_for_another_size_follow_the_frame(fitted_model, scene):
    """Regions drawn on a half-size frame judge the full-size one where the recipe scales (frames
    whose height varies a little, as KolektorSDD's), and a frame of another shape is still refused."""
    image, box, threshold = scene
    side = image.shape[0]

    def scaled(*regions: Region, frame: np.ndarray = image):
        recipe = Recipe("bottle", (side // 2, side // 2), regions, scales=True)
        bank = Bank(
            fitted_model, threshold, "b", "v1", recipe="bottle", regions=RecipeRegions(recipe, threshold)
        )
        return inspect([(header(frame), frame)], RecipeBook([bank]))[0].verdict

    seal = scaled(region("seal", halved(grown(box, 4, side))))
    assert seal.verdict == Verdict.NOK and seal.region == "seal"
    assert scaled(region("label", halved(grown(box, 24, side)), "ignore")).verdict == Verdict.OK
    wide = np.concatenate([image, image], axis=1)
    refused = scaled(region("seal", (0, 0, 40, 40)), frame=wide)
    assert (refused.verdict, refused.reason) == (Verdict.ERROR, "frame")
    assert "fit: scale takes frames of nearly the shape of 80x80" in (refused.error or "")
    drawn = region("seal", (10, 20, 30, 10))
    assert frame_mask(drawn, (160, 160), (80, 80)).sum() == 60 * 20 == 4 * frame_mask(drawn, (80, 80)).sum()


def test_a_mask_png_is_a_region_and_a_bad_one_is_refused_with_its_reason(fitted_model, scene, tmp_path):
    image, box, threshold = scene
    side = image.shape[0]
    x, y, w, h = grown(box, 24, side)
    painted = np.zeros((side, side), np.uint8)
    painted[y : y + h, x : x + w] = 255
    mask = tmp_path / "label.png"
    cv2.imwrite(str(mask), painted)
    label = Region("label", "ignore", (), mask=str(mask))
    assert judged(fitted_model, image, threshold, label).verdict == Verdict.OK
    seal = judged(fitted_model, image, threshold, Region("seal", "inspect", (), mask=str(mask)))
    assert seal.verdict == Verdict.NOK and seal.region == "seal"

    cv2.imwrite(str(tmp_path / "small.png"), painted[:80])
    cv2.imwrite(str(tmp_path / "blank.png"), np.zeros_like(painted))
    (tmp_path / "text.png").write_text("not a picture")
    for name, says in (
        ("small.png", f"small.png is 160x80, the regions are drawn for {side}x{side}"),
        ("blank.png", "blank.png marks no pixel"),
        ("text.png", "text.png is not an image"),
    ):
        recipe = recipe_with({"name": "tag", "mode": "ignore", "mask": str(tmp_path / name)})
        config = parse_config(yaml.safe_dump(station(tmp_path, [recipe])))
        with pytest.raises(ConfigError, match=f"recipe bottle: region tag: mask .*{says}"):
            check_station(config, bind=True)
    both = recipe_with({"name": "tag", "rect": [0, 0, 5, 5], "mask": str(mask)})
    assert "give exactly one of rect, polygon or mask" in problems(station(tmp_path, [both]))


def test_each_frame_is_judged_by_its_products_recipe(fitted_model, scene):
    image, box, threshold = scene
    strict = Bank(fitted_model, threshold, "b", "v1", recipe="strict")
    lenient_recipe = Recipe(
        "lenient", image.shape[:2], (region("label", grown(box, 24, image.shape[0]), "ignore"),)
    )
    lenient = Bank(
        fitted_model, threshold, "b", "v1", recipe="lenient", regions=RecipeRegions(lenient_recipe, threshold)
    )
    book = RecipeBook([strict, lenient])
    frames = [
        (header(image, f"f{i}", product), image)
        for i, product in enumerate(["lenient", None, "lenient", "strict"])
    ]
    verdicts = [o.verdict for o in inspect(frames, book)]
    assert [v.frame_id for v in verdicts] == ["f0", "f1", "f2", "f3"]
    assert [v.recipe for v in verdicts] == ["lenient", "strict", "lenient", "strict"]
    assert [v.verdict for v in verdicts] == [Verdict.OK, Verdict.NOK, Verdict.OK, Verdict.NOK]


# ---- regions that follow the part ---------------------------------------------------------------
def turned(image: np.ndarray, degrees: float, shift: tuple[float, float]) -> np.ndarray:
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    matrix[:, 2] += shift
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)


def registered(model, threshold, reference_path, *regions: Region, on_failure: str = "error") -> RecipeBook:
    image_hw = cv2.imread(str(reference_path)).shape[:2]
    recipe = Recipe("moving", image_hw, regions, Registration(str(reference_path), 15.0, 0.7, on_failure))
    return RecipeBook(
        [Bank(model, threshold, "b", "v1", recipe="moving", regions=RecipeRegions(recipe, threshold))]
    )


def test_an_ignore_region_follows_the_part_it_is_drawn_on(fitted_model, scene, tmp_path):
    image, box, threshold = scene
    reference = tmp_path / "reference.png"
    cv2.imwrite(str(reference), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    label = region("label", grown(box, 12, image.shape[0]), "ignore")
    moved = turned(image, 9.0, (8.0, -6.0))  # the part, and its defect, moved and turned
    still = Recipe("fixed", image.shape[:2], (label,))
    fixed = Bank(fitted_model, threshold, "b", "v1", recipe="fixed", regions=RecipeRegions(still, threshold))
    assert inspect([(header(moved), moved)], fixed)[0].verdict.verdict == Verdict.NOK, (
        "the defect left the region"
    )
    following = inspect([(header(moved), moved)], registered(fitted_model, threshold, reference, label))[0]
    assert following.verdict.verdict == Verdict.OK, "the region moved with the part"


def test_a_frame_that_cannot_be_registered_is_never_judged_as_if_it_were(fitted_model, scene, tmp_path):
    image, box, threshold = scene
    reference = tmp_path / "reference.png"
    cv2.imwrite(str(reference), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    label = region("label", grown(box, 12, image.shape[0]), "ignore")
    noise = np.random.default_rng(0).integers(0, 255, image.shape, dtype=np.uint8)
    error = inspect([(header(noise), noise)], registered(fitted_model, threshold, reference, label))[
        0
    ].verdict
    assert (error.verdict, error.reason) == (Verdict.ERROR, "registration")
    assert "below the recipe's 0.70" in (error.error or "")
    rejected = registered(fitted_model, threshold, reference, label, on_failure="nok")
    nok = inspect([(header(noise), noise)], rejected)[0].verdict
    assert (nok.verdict, nok.reason, nok.defects) == (Verdict.NOK, "registration", [])


def test_registration_settings_are_checked(tmp_path):
    cv2.imwrite(str(tmp_path / "ref.png"), np.zeros((100, 120), np.uint8))
    registration = {"reference": str(tmp_path / "ref.png")}
    recipe = recipe_with({"name": "a", "rect": [0, 0, 5, 5]}) | {"registration": registration}
    config = parse_config(yaml.safe_dump(station(tmp_path, [recipe])))
    with pytest.raises(ConfigError, match=r"ref\.png is 120x100, the regions are drawn for 160x160"):
        check_station(config, bind=True)
    lost = recipe | {"registration": {"reference": str(tmp_path / "gone.png")}}
    assert "gone.png is not a file" in problems_of(station(tmp_path, [lost]))
    bare = {"name": "bottle", "registration": registration}
    assert "registration moves regions: the recipe has none" in problems(station(tmp_path, [bare]))


def problems_of(raw: dict) -> str:
    """What check_station says of a file the schema accepts."""
    with pytest.raises(ConfigError) as refused:
        check_station(parse_config(yaml.safe_dump(raw)))
    return str(refused.value)


# ---- a threshold per region ----------------------------------------------------------------------
def test_edge_calibrate_chooses_a_threshold_per_region_for_these_regions(tmp_path, synthetic_category):
    from edge.bankstore import BankStore
    from edge.calibration.procedure import calibrate
    from edge.config import CalibrationConfig
    from edge.services.worker import region_thresholds

    frames = [read_image(p) for p in synthetic_category.train]
    regions = [{"name": "top", "rect": [0, 0, 160, 80]}, {"name": "bottom", "rect": [0, 80, 160, 80]}]
    config = parse_config(yaml.safe_dump(station(tmp_path, [recipe_with(*regions)])))
    recipe = config.recipe()
    store = BankStore(tmp_path / "store")
    result = calibrate(store, frames, CalibrationConfig(frames=len(frames)), regions=recipe.spec())
    record = result.record["regions"]
    listed = store.reports()[-1]["region_thresholds"]  # what --list and edge-view show
    assert {name: c["threshold"] for name, c in listed["regions"].items()} == {
        name: c["threshold"] for name, c in record["thresholds"].items()}  # fmt: skip
    assert set(record["thresholds"]) == {"top", "bottom"} and record["part"]["held_out"] == len(frames)
    for choice in record["thresholds"].values():
        assert (
            choice["threshold"] > 0 and choice["held_out"] == len(frames) and 0 <= choice["frr_upper_95"] <= 1
        )
    part = record["part"]
    assert part["above"] >= max(
        c["above"] for c in record["thresholds"].values()
    )  # any region rejects the part
    info = {"calibration": result.record}
    chosen = region_thresholds(recipe, info, "bank")
    assert chosen == {name: choice["threshold"] for name, choice in record["thresholds"].items()}
    moved = recipe_with(
        {"name": "top", "rect": [0, 0, 160, 90]}, {"name": "bottom", "rect": [0, 90, 160, 70]}
    )
    other = parse_config(yaml.safe_dump(station(tmp_path, [moved]))).recipe()
    assert region_thresholds(other, info, "bank") is None, "regions drawn since: the bank's threshold judges"


STREAMING = {"cam0": {"state": "streaming"}}
AWAY = {"cam0": {"state": "reconnecting", "reason": "link down"}, "cam1": {"state": "gone"}}


@pytest.mark.parametrize(
    ("alive", "cameras", "job", "stopping", "state"),
    [
        (None, {}, None, False, ("Preoperational", "")),
        (True, STREAMING | {"cam1": {"state": "ended"}}, None, False, ("Ready", "")),
        (True, STREAMING, "P-1", False, ("Busy", "")),
        (False, STREAMING, "P-1", False, ("Error", "the station's heartbeats stopped")),
        (True, AWAY, None, False, ("Error", "camera cam0 reconnecting: link down; camera cam1 gone")),
        (True, STREAMING, "P-1", True, ("Halted", "")),
    ],
)
def test_the_vision_state_says_ready_only_when_a_job_can_run(alive, cameras, job, stopping, state):
    assert vision_state(alive, cameras, job, stopping) == state


def test_kept_selections_that_no_longer_fit_are_dropped_with_a_line(tmp_path, caplog):
    from edge.pipeline.selections import load_selections, save_selections

    path = tmp_path / "selections.json"
    save_selections(path, {"cam0": "bottle", "cam1": "gone"})
    assert load_selections(path, ["bottle", "screw"]) == {"cam0": "bottle"}
    assert "camera cam1: the kept selection 'gone' is no recipe of this station: dropped" in caplog.text
    path.write_text('{"cam0": "bott')  # cut short (no longer written so, but a disk can fail)
    assert load_selections(path, ["bottle"]) == {} and "cannot be read" in caplog.text
    assert load_selections(tmp_path / "none.json", ["bottle"]) == {}
    (tmp_path / "blocker").write_text("a file where the folder should be")
    save_selections(tmp_path / "blocker" / "selections.json", {"cam0": "bottle"})  # logged, not raised
    assert "could not be kept" in caplog.text
