"""Fit and score one MVTec-format category, with accuracy, speed and memory figures."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edge.engine.config import EngineConfig
from edge.engine.geometry import mask_to_input
from edge.engine.model import PatchCore
from edge.eval.metrics import image_auroc, pixel_auroc, pro_score
from edge.eval.mvtec import Category
from edge.imageio import read_image
from edge.memory import peak_rss_mb, reset_peak_rss

LATENCY_IMAGES = 30


@dataclass(frozen=True)
class EvalOptions:
    config: EngineConfig
    weights: str | None = None
    random_weights: bool = False
    progress: bool = True


def _read_all(paths: list[Path], bar: tqdm) -> Iterator[np.ndarray]:
    for path in paths:
        yield read_image(path)
        bar.update(1)


def evaluate_category(category: Category, options: EvalOptions) -> dict[str, Any]:
    """Fit on train/good, score test/*, and return the figures edge-eval reports."""
    config = options.config
    reset_peak_rss()
    started = time.perf_counter()
    with tqdm(
        total=len(category.train),
        desc=f"{category.name} fit",
        unit="img",
        disable=not options.progress,
        leave=False,
    ) as bar:
        model = PatchCore.fit(_read_all(category.train, bar), config, options.weights, options.random_weights)
    fit_s = time.perf_counter() - started
    fit_peak_rss = peak_rss_mb()

    scores: list[float] = []
    maps: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    test_images: list[np.ndarray] = []
    test_s = 0.0  # reading and scoring only: ground truth handling is the evaluation's, not the line's
    with tqdm(
        total=len(category.test),
        desc=f"{category.name} test",
        unit="img",
        disable=not options.progress,
        leave=False,
    ) as bar:
        batches = [
            category.test[s : s + config.batch_size] for s in range(0, len(category.test), config.batch_size)
        ]
        # the next batch is read and decoded (cv2 releases the GIL) while this one is scored, as a
        # capture process reads the camera while the worker scores
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as reader:
            upcoming = reader.submit(_read_batch, batches[0]) if batches else None
            for index, batch in enumerate(batches):
                started = time.perf_counter()
                images = upcoming.result()
                if index + 1 < len(batches):
                    upcoming = reader.submit(_read_batch, batches[index + 1])
                results = model.score(images)
                test_s += time.perf_counter() - started
                _collect(batch, images, results, scores, maps, masks, test_images)
                bar.update(len(batch))

    latencies = []
    for image in [test_images[0], *test_images]:  # the first call warms up and is not counted
        t0 = time.perf_counter()
        model.score([image])
        latencies.append((time.perf_counter() - t0) * 1000.0)
    labels = np.array([s.label for s in category.test])
    return {
        "image_auroc": image_auroc(labels, np.array(scores)),
        "pixel_auroc": pixel_auroc(masks, maps),
        "pro": pro_score(masks, maps),
        "fit_s": fit_s,
        "extract_s": model.info["timings"]["extract_s"],
        "coreset_s": model.info["timings"]["coreset_s"],
        "images_per_s": len(category.test) / test_s,
        "latency_ms_b1": statistics.median(latencies[1:]),
        "peak_rss_mb": max(fit_peak_rss, peak_rss_mb()),
        "fit_peak_rss_mb": fit_peak_rss,
        "bank_rows": int(model.bank.shape[0]),
        "bank_dim": int(model.bank.shape[1]),
        "train_images": len(category.train),
        "test_images": len(category.test),
        "random_weights": model.extractor.random_weights,
        "extractor": model.extractor.name,
    }


def _read_batch(samples: list) -> list[np.ndarray]:
    return [read_image(sample.path) for sample in samples]


def _collect(
    batch: list, images: list, results: list, scores: list, maps: list, masks: list, kept: list
) -> None:
    """Keep what the metrics need of a scored batch: scores, maps, masks in input geometry, and the
    first images for the latency measurement."""
    for sample, image, result in zip(batch, images, results, strict=True):
        scores.append(result.score)
        maps.append(result.anomaly_map)
        mask = sample.mask(image.shape[:2]).astype(np.uint8)
        masks.append(mask_to_input(mask, result.placement) > 0)
        if len(kept) < LATENCY_IMAGES:
            kept.append(image)
