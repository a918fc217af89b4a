"""Canonical geometry: resize the short side to S, then centre-crop S x S."""

from __future__ import annotations

import numpy as np


def rotated_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    """Display (width, height) after a rotation of 0/90/180/270 degrees."""
    return (height, width) if rotation % 180 else (width, height)


def short_side_resize(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) scaled so that the short side equals `size`; the long side is rounded."""
    if width <= height:
        return size, max(size, round(height * size / width))
    return max(size, round(width * size / height)), size


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) -> (size, size, C), the centre window; odd margins leave the extra pixel at the end."""
    height, width = image.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return image[top:top + size, left:left + size]


def rotate_to_display(image: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a display rotation given in degrees counter-clockwise (PyAV's `frame.rotation`)."""
    quarter_turns = (round(rotation / 90)) % 4
    return np.ascontiguousarray(np.rot90(image, k=quarter_turns)) if quarter_turns else image
