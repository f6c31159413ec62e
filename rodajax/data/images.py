"""Image and mask loading, resizing and cropping (numpy, uint8).

The pipeline keeps images as uint8 `[N, R, R, 3]` after resizing to R (default
256): corruptions act there, in [0, 255], before the centre crop and the
ImageNet normalisation, as in ImageNet-C and the reference PatchCore.
"""
from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DataError(ValueError):
  """A dataset that is missing, empty or malformed; the message says how to fix it."""


def list_images(folder: str, recursive: bool = False) -> list[str]:
  """Sorted image files inside `folder` (and its subfolders when `recursive`; hidden skipped)."""
  if not os.path.isdir(folder):
    return []
  if not recursive:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
  out = []
  for d, subdirs, files in os.walk(folder):   # followlinks=False: no symlink loops
    subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
    out += [os.path.join(d, f) for f in files
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
  return sorted(out)


MIN_SIDE = 16     # px: smaller images hold no patch grid worth scoring
MAX_ASPECT = 8.0  # longer side / shorter side beyond which a square resize is meaningless


def check_file(path: str, what: str = "image") -> None:
  """A DataError naming `path` (a `what`, e.g. image or point cloud) unless it is a non-empty file."""
  if os.path.islink(path) and not os.path.exists(path):
    raise DataError(f"{what} {path!r} is a broken symlink (to {os.readlink(path)!r}); "
                    "fix or remove the link")
  if not os.path.exists(path):
    raise DataError(f"{what} {path!r} does not exist; check the path")
  if not os.path.isfile(path):
    raise DataError(f"{what} {path!r} is not a regular file; pass {what} files only")
  if os.path.getsize(path) == 0:
    raise DataError(f"{what} {path!r} is empty (0 bytes); remove or replace the file")


def _to_rgb(im: Image.Image, path: str) -> tuple[Image.Image, list[str]]:
  """The documented conversions to 8-bit RGB, with a note for each; DataError otherwise."""
  notes = []
  mode = im.mode
  if mode == "RGB":
    return im, notes
  if mode in ("L", "1"):
    notes.append("grey, replicated to RGB" if mode == "L" else "1-bit, expanded to RGB")
    return im.convert("RGB"), notes
  if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
    notes.append(f"{mode} with transparency: alpha dropped")
    return im.convert("RGBA").convert("RGB"), notes
  if mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
    notes.append(f"{mode}, converted to RGB")
    return im.convert("RGB"), notes
  if mode.startswith("I"):   # I;16, I;16B, I;16L, I;16N, I (32-bit int)
    a = np.asarray(im)
    if a.ndim != 2 or a.size == 0 or a.min() < 0 or a.max() > 65535:
      raise DataError(f"image {path!r} is a {mode} image with values outside 0..65535; "
                      "export it as an 8- or 16-bit PNG")
    notes.append(f"16-bit ({mode}), scaled to 8 bits as value / 257 (full 16-bit range)")
    g = np.round(a.astype(np.float64) / 257.0).astype(np.uint8)
    return Image.fromarray(np.repeat(g[..., None], 3, axis=2), "RGB"), notes
  raise DataError(f"image {path!r} has pixel mode {mode!r}, which has no defined 8-bit RGB "
                  "mapping (e.g. float depth maps); export it as an 8- or 16-bit PNG/JPEG")


def read_rgb(path: str, size: int | None) -> tuple[np.ndarray, str]:
  """One image as uint8 RGB `[size, size, 3]` and a note of what was converted ("" = none).

  Documented conversions (each named in the note): grey, 1-bit, palette, CMYK
  -> RGB; alpha dropped; 16-bit grey scaled by 1/257; the EXIF orientation
  applied; the first frame of a multi-frame file; a non-square image resized to
  square (bicubic). Refused with a DataError that names the file: missing,
  broken-symlink, empty, unreadable or truncated files, images smaller than
  MIN_SIDE px or more elongated than MAX_ASPECT:1, modes without an 8-bit
  mapping (float).
  """
  check_file(path)
  notes = []
  try:
    with Image.open(path) as im:
      n_frames = getattr(im, "n_frames", 1)
      im.load()   # decode now: truncated files fail here, inside the try
      if n_frames > 1:
        notes.append(f"first of {n_frames} frames")
      turned = ImageOps.exif_transpose(im)
      if turned is not None and turned.size != im.size:
        notes.append("rotated per its EXIF orientation")
      im = turned if turned is not None else im
      w, h = im.size
      if min(w, h) < MIN_SIDE:
        raise DataError(f"image {path!r} is {w}x{h} px; images must be at least {MIN_SIDE} px "
                        "on each side")
      if max(w, h) / min(w, h) > MAX_ASPECT:
        raise DataError(f"image {path!r} is {w}x{h} px (aspect {max(w, h) / min(w, h):.0f}:1); "
                        f"the square resize needs an aspect of at most {MAX_ASPECT:.0f}:1, so "
                        "crop the region to inspect first")
      im, more = _to_rgb(im, path)
      notes += more
      if size is not None and im.size != (size, size):
        if w != h:
          notes.append(f"{w}x{h} resized to square")
        im = im.resize((size, size), Image.BICUBIC)
      return np.asarray(im, np.uint8), "; ".join(notes)
  except DataError:
    raise
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error,
          Image.DecompressionBombError) as e:
    raise DataError(f"cannot read image {path!r} ({type(e).__name__}: {e}); remove or replace "
                    "the file") from e


def load_rgb(path: str, size: int | None) -> np.ndarray:
  """One image as uint8 RGB `[size, size, 3]` (`read_rgb` without its note)."""
  return read_rgb(path, size)[0]


def expand(spec: str) -> tuple[list[str], str]:
  """`(paths, root)` of a folder (its images, subfolders included), a glob pattern, or one file.

  `root` is the folder the paths are relative to (for output names). Raises
  DataError naming `spec` when nothing matches.
  """
  import glob as globlib
  if os.path.isdir(spec):
    paths = list_images(spec, recursive=True)
    if not paths:
      raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {spec!r} or its subfolders; "
                      "pass the folder that holds the images")
    return paths, spec
  if any(ch in spec for ch in "*?["):
    paths = sorted(p for p in globlib.glob(spec, recursive=True) if not os.path.isdir(p))
    if not paths:
      raise DataError(f"the pattern {spec!r} matches no files; quote it so the shell does not "
                      "expand it, and check the folder")
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    return paths, root
  if os.path.isfile(spec) or os.path.islink(spec):
    return [spec], os.path.dirname(spec) or "."
  raise DataError(f"no folder or file {spec!r}; pass a folder of images, a file, or a quoted "
                  "glob pattern such as 'line3/*.png'")


def load_mask(path: str, size: int | None, image_size: tuple[int, int] | None = None) -> np.ndarray:
  """A ground-truth mask as bool `[size, size]` (nearest-neighbour resize)."""
  try:
    with Image.open(path) as im:
      if image_size is not None and im.size != image_size:
        raise DataError(f"mask {path!r} is {im.size[0]}x{im.size[1]} but its image is "
                        f"{image_size[0]}x{image_size[1]}; masks must match their images")
      im = im.convert("L")
      if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.NEAREST)
      return np.asarray(im) > 127
  except (UnidentifiedImageError, OSError, SyntaxError) as e:
    raise DataError(f"cannot read mask {path!r} ({e})") from e


def image_size_of(path: str) -> tuple[int, int]:
  try:
    with Image.open(path) as im:
      return im.size
  except (UnidentifiedImageError, OSError, SyntaxError) as e:
    raise DataError(f"cannot read image {path!r} ({e}); remove or replace the file") from e


def read_many(paths: Sequence[str], size: int, workers: int = 4) -> tuple[np.ndarray, list[str]]:
  """Images as uint8 `[N, size, size, 3]` and each one's `read_rgb` note, read in a thread pool."""
  if not paths:
    return np.zeros((0, size, size, 3), np.uint8), []
  with ThreadPoolExecutor(workers) as ex:
    out = list(ex.map(lambda p: read_rgb(p, size), paths))
  return np.stack([a for a, _ in out]), [n for _, n in out]


def load_many(paths: Sequence[str], size: int, workers: int = 4) -> np.ndarray:
  """Images as uint8 `[N, size, size, 3]`, read in a thread pool (`read_many` without notes)."""
  return read_many(paths, size, workers)[0]


def tally_notes(notes) -> dict[str, int]:
  """{conversion: number of images} of `read_rgb` notes ("a; b" counts a and b once each)."""
  out: dict[str, int] = {}
  for note in notes:
    for part in filter(None, note.split("; ")):
      out[part] = out.get(part, 0) + 1
  return out


def clipped_share(images: np.ndarray, level: int = 250) -> np.ndarray:
  """Share of each image's pixels clipped white: grey level (mean of R, G, B) >= `level`.

  `images [N, H, W, 3]` uint8 -> `[N]` float64 in [0, 1]. Overexposure erases what a
  detector would see and flat white can score as anomalous: ImageNet-C brightness 3 clips
  more than 30 % of the pixels of 34 of ELPV mono's 50 good test cells (docs/results.md,
  "The selection's worst cell, looked at").
  """
  x = np.asarray(images)
  if x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f"clipped_share takes images [N, H, W, 3], got shape {x.shape}")
  return (x.astype(np.float32).mean(-1) >= level).mean((1, 2)).astype(np.float64)


def centre_crop(x: np.ndarray, crop: int) -> np.ndarray:
  """Centre crop of the two spatial axes after the batch axis: `[N, R, R, ...]`."""
  h, w = x.shape[1:3]
  if crop > min(h, w):
    raise DataError(f"crop {crop} is larger than the resized image {h}x{w}; "
                    "set data.crop <= data.resize")
  t, l = (h - crop) // 2, (w - crop) // 2
  return x[:, t:t + crop, l:l + crop]
