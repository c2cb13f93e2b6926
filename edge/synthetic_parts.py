"""Synthetic parts: a textured disc on a plain background, and the defects drawn on it with their
exact masks. Shared by the evaluation kit's data set (edge-synth) and the station's synthetic
camera (edge-demo, tests), so neither takes it from the other.

Good parts vary in position, rotation, lighting and sensor noise; defects are scratches, dark or
bright spots, or a missing piece.
"""

from __future__ import annotations

import cv2
import numpy as np

DEFECT_TYPES = ("scratch", "spot", "missing")


def make_part(rng: np.random.Generator, size: int) -> np.ndarray:
    """One good part: textured disc, jittered in place, angle and light, with sensor noise."""
    canvas = np.full((size, size, 3), (38, 42, 46), np.float32)
    centre = (size / 2 + rng.uniform(-0.04, 0.04) * size, size / 2 + rng.uniform(-0.04, 0.04) * size)
    radius = 0.36 * size
    angle = rng.uniform(0, 180)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = np.deg2rad(angle)
    u = (xx - centre[0]) * np.cos(theta) + (yy - centre[1]) * np.sin(theta)
    v = -(xx - centre[0]) * np.sin(theta) + (yy - centre[1]) * np.cos(theta)
    texture = 150 + 35 * np.sin(u / size * 60) + 18 * np.sin(v / size * 25)
    disc = (u**2 + v**2) <= radius**2
    for k in range(4):  # four holes at fixed places on the part: they rotate with it
        hu, hv = 0.55 * radius * np.cos(k * np.pi / 2), 0.55 * radius * np.sin(k * np.pi / 2)
        disc &= (u - hu) ** 2 + (v - hv) ** 2 > (0.09 * radius) ** 2
    tint = np.array([1.0, 0.92, 0.8], np.float32)
    canvas[disc] = texture[disc][:, None] * tint
    canvas *= rng.uniform(0.85, 1.15)  # lighting
    canvas += rng.normal(0, 4.0, canvas.shape)  # sensor noise
    return canvas


def draw_defect(rng: np.random.Generator, image: np.ndarray, kind: str) -> np.ndarray:
    """Draw one defect on `image` in place; return its mask (uint8 0/255)."""
    size = image.shape[0]
    mask = np.zeros((size, size), np.uint8)
    cx, cy = (int(size / 2 + rng.uniform(-0.22, 0.22) * size) for _ in range(2))
    if kind == "scratch":
        length, angle = rng.uniform(0.12, 0.3) * size, rng.uniform(0, np.pi)
        dx, dy = int(np.cos(angle) * length / 2), int(np.sin(angle) * length / 2)
        cv2.line(mask, (cx - dx, cy - dy), (cx + dx, cy + dy), 255, thickness=max(2, size // 90))
        shade = rng.choice([35.0, 235.0])
    elif kind == "spot":
        axes = (int(rng.uniform(0.02, 0.05) * size), int(rng.uniform(0.02, 0.05) * size))
        cv2.ellipse(mask, (cx, cy), axes, rng.uniform(0, 180), 0, 360, 255, thickness=-1)
        shade = rng.choice([20.0, 250.0])
    else:
        radius = int(rng.uniform(0.06, 0.1) * size)
        cv2.circle(mask, (cx, cy), radius, 255, thickness=-1)
        shade = 40.0  # the background shows through where material is missing
    image[mask > 0] = shade + rng.normal(0, 4.0, (int((mask > 0).sum()), 3))
    return mask
