"""edge-worker: scores frames against the station's bank; SIGHUP or a control request reloads the bank.

With endpoints.workers set, it is slot `--slot` of the station's pool: it takes frames from the
broker on the slot's device (worker.devices, else worker.device), and reloads when the broker asks.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING

import numpy as np

from edge.cli_support import run_cli
from edge.config import WORKER_ENGINE_SETTINGS, RecipeConfig, StationConfig
from edge.errors import ConfigError
from edge.lifecycle import stop_on_signals
from edge.pipeline.inspection import Bank, RecipeBook
from edge.services.runtime import (
    curve_client,
    curve_server,
    operate,
    selections_path,
    service_parser,
    start_service,
)

if TYPE_CHECKING:  # imported when run: it brings torch, after OMP_WAIT_POLICY is set
    from edge.pipeline.judgement import RecipeRegions
    from edge.pipeline.recorder import FrameRecorder
    from edge.pipeline.worker import WorkerSettings

log = logging.getLogger("edge.worker")
WARM_UP_SIDE = 256


def load_recipe(config: StationConfig, recipe: RecipeConfig, device: str | None = None) -> Bank:
    """A recipe's active bank version with its threshold (the configuration's override, else the
    bank's own) and its regions, warmed up on the line's frame size."""
    from edge.bankstore import resolve_bank
    from edge.engine.artifact import load_model

    ref = resolve_bank(recipe.bank.path)
    model = load_model(
        ref.path,
        config.weights,
        **{name: getattr(config.worker, name) for name in WORKER_ENGINE_SETTINGS}
        | {"device": device or config.worker.device, "batch_size": config.worker.max_batch},
    )
    threshold = recipe.bank.threshold or model.threshold
    if threshold is None:
        where = "bank.threshold" if not config.recipes else f"recipe {recipe.name}'s bank.threshold"
        raise ConfigError(
            f"bank {ref.path} has no calibrated threshold: calibrate it with edge-calibrate "
            f"or set {where} in the configuration"
        )
    regions = recipe_regions(config, recipe, model.info, threshold, ref.path)
    backend = f"{model.extractor.name}+{model.index.name}"
    # first-call set-up of every batch size a micro-batch can have, before any part waits
    model.warm_up(batches=sorted({1, config.worker.max_batch}))
    frame_hw = model.usual_frame_hw() or (WARM_UP_SIDE, WARM_UP_SIDE)
    model.score([np.zeros((*frame_hw, 3), np.uint8)])  # the host side too, on the line's frame size
    return Bank(model, threshold, ref.bank_id, ref.version, backend, recipe.name, regions)


def recipe_regions(
    config: StationConfig, recipe: RecipeConfig, info: dict, threshold: float, path: object
) -> RecipeRegions | None:
    """A recipe's regions with their thresholds: the ones drawn on edge-view where the bank
    version carries them (they take the place of the station file's), else the station file's."""
    from edge.bankfile import DRAWN_REGIONS
    from edge.pipeline.judgement import RecipeRegions

    drawn = info.get(DRAWN_REGIONS)
    if drawn is not None:
        recipe = config.with_drawn(recipe, drawn)
        log.info("recipe %s: %d regions drawn by %s on edge-view (bank %s), in place of the station file's",
                 recipe.name, len(recipe.regions), drawn.get("by"), path)  # fmt: skip
    if not recipe.regions:
        return None
    return RecipeRegions(recipe.spec(), threshold, region_thresholds(recipe, info, path))


def region_thresholds(recipe: RecipeConfig, info: dict, path: object) -> dict[str, float] | None:
    """The region thresholds edge-calibrate chose for this recipe's regions, if the bank has them
    and the regions are still those (the station file's bank.threshold, when set, judges instead)."""
    from edge.recipe import recipe_digest

    record = info.get("calibration", {}).get("regions")
    if record is None or recipe.bank.threshold is not None:
        return None
    if record.get("digest") != recipe_digest(recipe.spec()):
        log.warning(
            "recipe %s: bank %s has region thresholds for other regions (they changed since edge-calibrate); "
            "its regions take the bank's threshold until it is calibrated again",
            recipe.name,
            path,
        )
        return None
    return {name: float(choice["threshold"]) for name, choice in record["thresholds"].items()}


def load_station_recipes(config: StationConfig, device: str | None = None) -> RecipeBook:
    """Every recipe of the station, loaded (a changeover between two parts loads nothing)."""
    banks = [load_recipe(config, recipe, device) for recipe in config.recipe_list]
    return RecipeBook(banks, config.mm_per_px)


def worker_settings(config: StationConfig, slot: int) -> WorkerSettings:
    """A lone worker binds the frames endpoint; a pool worker connects to the broker."""
    from edge.pipeline.worker import WorkerSettings

    pooled = config.pooled
    security = config.security
    return WorkerSettings(
        station=config.station,
        frames_endpoint=config.endpoints.workers or config.endpoints.frames,  # a pool's: the broker's
        results_endpoint=config.endpoints.results,
        max_batch=config.worker.max_batch,
        max_wait_ms=config.worker.max_wait_ms,
        control_endpoint=None if pooled else config.endpoints.control,
        curve=curve_server(security.frames.worker if security.frames else None, "frames"),
        pool_name=f"{socket.gethostname()}-{slot}" if pooled else None,
        pool_curve=curve_client(security.workers.worker if security.workers else None),
        selections=None if pooled else selections_path(config),  # a pool's are its broker's
    )


def frame_recorder(config: StationConfig) -> FrameRecorder | None:
    """The recent-frames ring's writer, when the configuration keeps recent frames."""
    from edge.pipeline.recorder import FrameRecorder
    from edge.recent import RecentFrames

    keep = config.recent_frames
    if keep is None:
        return None
    ring = RecentFrames(keep.path, keep.max_frames, int(keep.max_mb * 1e6))
    try:
        ring.root.mkdir(parents=True, exist_ok=True)
        ring.prune()
    except OSError as exc:  # said now, not at the first reject; inspection goes on without frames
        log.error("recent_frames.path %s is unusable (%s): no frames are kept for edge-view", keep.path, exc)
    else:
        log.info("keeping recent frames in %s (at most %d, %.0f MB)", keep.path, keep.max_frames, keep.max_mb)
    return FrameRecorder(ring, keep.ok_every)


def _main(argv: list[str] | None) -> int:
    parser = service_parser("edge-worker", __doc__.split("\n\n")[0])
    parser.add_argument(
        "--slot", type=int, default=0, help="this worker's slot in the pool: its device, metrics port + slot"
    )
    args = parser.parse_args(argv)
    # torch's OpenMP threads spin while idle by default, which starves capture and publisher on a
    # small CPU; passive waiting must be set before torch is imported
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    config = start_service(args, needs_bank=True)
    import torch

    from edge.metrics import for_worker
    from edge.pipeline.worker import Worker

    if config.worker.torch_threads:
        torch.set_num_threads(config.worker.torch_threads)
    devices = config.worker_devices
    if not 0 <= args.slot < len(devices):
        raise ConfigError(f"--slot {args.slot}: this host's worker slots are 0 to {len(devices) - 1}")
    device = devices[args.slot]
    stop = stop_on_signals()
    recipes = load_station_recipes(config, device)
    settings = worker_settings(config, args.slot)
    load = lambda: load_station_recipes(config, device)  # noqa: E731
    worker = Worker(recipes, settings, load_bank=load, recorder=frame_recorder(config))
    signal.signal(signal.SIGHUP, lambda _signum, _frame: worker.reload_requested.set())
    metrics = for_worker(worker, config.station)
    role = f"pool worker {settings.pool_name} on {device}" if settings.pool_name else f"worker on {device}"
    status = f"{role}: " + "; ".join(
        f"recipe {b.recipe}: bank {b.bank_id} {b.version}, threshold {b.threshold:.4g}"
        for b in recipes.banks.values()
    )
    port = config.worker.metrics_port
    port = None if port is None else port + args.slot  # one port per worker slot on this host
    return operate("worker", worker.run, stop, metrics, port, status)


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
