"""Frame sources for video streams: numpy arrays, image files, video files (optional readers), synthetic.

Every source yields float32 frames [3, S, S], normalised with the ImageNet mean/std the vision models use.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}


def _resize_nearest(img: np.ndarray, size: int) -> np.ndarray:
    """img [H, W, 3] -> [size, size, 3] (nearest neighbour, numpy only)."""
    h, w = img.shape[:2]
    ys = (np.arange(size) * h / size).astype(int)
    xs = (np.arange(size) * w / size).astype(int)
    return img[ys][:, xs]


def to_model_frame(img: np.ndarray, size: int) -> np.ndarray:
    """HWC uint8 or float in [0, 1] (or CHW) -> normalised float32 [3, size, size]."""
    a = np.asarray(img)
    if a.ndim != 3:
        raise ValueError(f"frame: expected an image [H, W, 3] or [3, H, W], got shape {a.shape}")
    if a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    if a.shape[-1] != 3:
        raise ValueError(f"frame: expected 3 colour channels, got shape {a.shape}")
    a = a.astype(np.float32) / (255.0 if a.dtype == np.uint8 else 1.0)
    if a.shape[:2] != (size, size):
        a = _resize_nearest(a, size)
    return (a.transpose(2, 0, 1) - MEAN) / STD


def synthetic_frames(size: int, count: int, seed: int = 0) -> Iterator[np.ndarray]:
    """A moving bright square on noise: a deterministic stand-in for a camera."""
    rng = np.random.default_rng(seed)
    for t in range(count):
        img = rng.random((size, size, 3), dtype=np.float32) * 0.2
        x = (t * 3) % size
        img[size // 4: size // 2, x: x + size // 4] = 1.0
        yield to_model_frame(img, size)


def frames_from(source, size: int, limit: Optional[int] = None) -> Iterator[np.ndarray]:
    """source: a numpy array [T, H, W, 3] / [T, 3, H, W], an iterable of images, a folder or list of image
    files (needs Pillow), or a video file (needs imageio or OpenCV)."""
    it = _frames(source, size)
    for i, f in enumerate(it):
        if limit is not None and i >= limit:
            return
        yield f


def _frames(source, size):
    if isinstance(source, np.ndarray):
        if source.ndim != 4:
            raise ValueError(f"source: expected frames [T, H, W, 3] or [T, 3, H, W], got shape {source.shape}")
        for img in source:
            yield to_model_frame(img, size)
        return
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise FileNotFoundError(f"source: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {p}")
            yield from _images(files, size)
            return
        if not p.exists():
            raise FileNotFoundError(f"source: {p} does not exist")
        if p.suffix.lower() in VIDEO_SUFFIXES:
            yield from _video(p, size)
            return
        yield from _images([p], size)
        return
    if isinstance(source, Iterable):
        items = list(source)
        if items and isinstance(items[0], (str, Path)):
            yield from _images(items, size)
        else:
            for img in items:
                yield to_model_frame(img, size)
        return
    raise ValueError(f"source: expected an array, image files, a folder or a video file, got {type(source).__name__}")


def _images(files, size):
    try:
        from PIL import Image
    except ImportError as e:
        raise RuntimeError("reading image files needs Pillow: pip install tost-edge[video]") from e
    for f in files:
        with Image.open(f) as im:
            yield to_model_frame(np.asarray(im.convert("RGB").resize((size, size))), size)


def _video(path, size):
    try:
        import imageio.v3 as iio
        for img in iio.imiter(path):
            yield to_model_frame(img, size)
        return
    except ImportError:
        pass
    try:
        import cv2
    except ImportError as e:
        raise RuntimeError("reading video files needs imageio (with a plugin such as pyav) or opencv-python") from e
    cap = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, img = cap.read()
            if not ok:
                break
            yield to_model_frame(img[..., ::-1], size)
    finally:
        cap.release()
