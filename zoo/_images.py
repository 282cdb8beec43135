"""The 12 photos that scikit-learn and scikit-image ship, and seeded crops of them."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine import MissingDependencyError

SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                  "motorcycle_left.png", "hubble_deep_field.jpg", "camera.png", "coins.png",
                  "retina.jpg", "ihc.png")
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _skimage_data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("the sample photos need scikit-image (the `models` extra).")
    return Path(spec.submodule_search_locations[0]) / "data"


def _to_rgb_tensor(arr: np.ndarray) -> torch.Tensor:
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    arr = arr[..., :3]
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float() / 255.0


@functools.cache
def sample_photos() -> tuple[tuple[str, torch.Tensor], ...]:
    """(name, image (3, H, W) in [0, 1]) for the 12 photos, in a fixed order."""
    try:
        from PIL import Image
        from sklearn.datasets import load_sample_images
    except ImportError as e:
        raise MissingDependencyError(
            "the sample photos need scikit-learn and Pillow (the `models` extra).") from e
    sk = load_sample_images()
    photos = [(Path(name).stem, _to_rgb_tensor(img))
              for name, img in zip(sk.filenames, sk.images, strict=True)]
    base = _skimage_data_dir()
    for fname in SKIMAGE_PHOTOS:
        with Image.open(base / fname) as im:
            photos.append((Path(fname).stem, _to_rgb_tensor(np.asarray(im.convert("RGB")))))
    return tuple(photos)


def normalize(images: torch.Tensor) -> torch.Tensor:
    return (images - IMAGENET_MEAN) / IMAGENET_STD


def random_resized_crops(count: int, *, seed: int, size: int = 224,
                         scale: tuple[float, float] = (0.25, 1.0)) -> torch.Tensor:
    """`count` normalized crops (count, 3, size, size), cycling through the photos.

    Each crop takes a random area fraction in `scale` and aspect ratio in [3/4, 4/3] of its
    photo, is resized bilinearly (antialiased) and flipped with probability 1/2.
    """
    gen = torch.Generator().manual_seed(seed)
    photos = sample_photos()
    out = []
    for i in range(count):
        img = photos[i % len(photos)][1]
        _, h, w = img.shape
        r = torch.rand(4, generator=gen).tolist()
        area = h * w * (scale[0] + (scale[1] - scale[0]) * r[0])
        ratio = float(np.exp(np.log(3 / 4) + (np.log(4 / 3) - np.log(3 / 4)) * r[1]))
        cw = int(round(min(w, (area * ratio) ** 0.5)))
        ch = int(round(min(h, (area / ratio) ** 0.5)))
        top, left = int(r[2] * (h - ch)), int(r[3] * (w - cw))
        crop = img[:, top : top + ch, left : left + cw].unsqueeze(0)
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False)[0]
        if torch.rand(1, generator=gen).item() < 0.5:
            crop = crop.flip(-1)
        out.append(normalize(crop.clamp(0, 1)))
    return torch.stack(out)


def center_crop(name: str, size: int = 224) -> torch.Tensor:
    """A normalized (1, 3, size, size) centre crop of one photo (shorter side resized)."""
    img = dict(sample_photos())[name]
    _, h, w = img.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = img[:, top : top + s, left : left + s].unsqueeze(0)
    crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)
    return normalize(crop.clamp(0, 1)[0]).unsqueeze(0)
