"""The image loader: documented conversions, clear refusals, and a fuzz test (never a crash)."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from rodajax.data import images
from rodajax.data.images import DataError, read_rgb


def _save(path, arr_or_img, fmt=None, **kw):
  img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
  img.save(path, format=fmt, **kw)
  return str(path)


def _rgb(h=40, w=40, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def test_rgb_is_read_as_is(tmp_path):
  a = _rgb()
  x, note = read_rgb(_save(tmp_path / "a.png", a), None)
  np.testing.assert_array_equal(x, a)
  assert note == ""


def test_grey_is_replicated_with_a_note(tmp_path):
  g = np.arange(40 * 40, dtype=np.uint8).reshape(40, 40)
  x, note = read_rgb(_save(tmp_path / "g.png", g), None)
  assert x.shape == (40, 40, 3) and "grey" in note
  for ch in range(3):
    np.testing.assert_array_equal(x[..., ch], g)


def test_rgba_drops_alpha_with_a_note(tmp_path):
  a = np.dstack([_rgb(), np.full((40, 40), 7, np.uint8)])
  x, note = read_rgb(_save(tmp_path / "a.png", Image.fromarray(a, "RGBA")), None)
  np.testing.assert_array_equal(x, a[..., :3])
  assert "alpha dropped" in note


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
  # PIL's own convert("RGB") clips 16-bit values to 255: a silent wrong result.
  k = np.random.default_rng(0).integers(0, 256, (40, 40))
  x, note = read_rgb(_save(tmp_path / "d.png", (k * 257).astype(np.uint16)), None)
  np.testing.assert_array_equal(x[..., 0], k)
  assert "16-bit" in note and "/ 257" in note


def test_palette_cmyk_and_exif_rotation_are_converted_with_notes(tmp_path):
  p = Image.fromarray(_rgb()).convert("P")
  x, note = read_rgb(_save(tmp_path / "p.png", p), None)
  assert x.shape == (40, 40, 3) and "P" in note
  c = Image.fromarray(_rgb()).convert("CMYK")
  x, note = read_rgb(_save(tmp_path / "c.jpg", c, "JPEG"), None)
  assert x.shape == (40, 40, 3) and "CMYK" in note
  img = Image.fromarray(_rgb(40, 60))
  exif = img.getexif()
  exif[0x0112] = 6   # rotate 90 degrees on display
  path = tmp_path / "r.jpg"
  img.save(path, "JPEG", exif=exif)
  x, note = read_rgb(str(path), None)
  assert x.shape == (60, 40, 3) and "EXIF" in note


def test_first_frame_of_a_multi_frame_file_with_a_note(tmp_path):
  frames = [Image.fromarray(_rgb(seed=s)) for s in range(3)]
  path = tmp_path / "m.tif"
  frames[0].save(path, save_all=True, append_images=frames[1:])
  x, note = read_rgb(str(path), None)
  np.testing.assert_array_equal(x, np.asarray(frames[0]))
  assert "first of 3 frames" in note


def test_non_square_is_resized_with_a_note(tmp_path):
  x, note = read_rgb(_save(tmp_path / "w.png", _rgb(40, 80)), 32)
  assert x.shape == (32, 32, 3) and "80x40 resized to square" in note


@pytest.mark.parametrize("size,msg", [((1, 1), "at least 16 px"), ((10000, 1), "at least 16 px"),
                                      ((2000, 20), "aspect 100:1")])
def test_degenerate_sizes_are_refused(tmp_path, size, msg):
  path = _save(tmp_path / "s.png", np.zeros((size[1], size[0], 3), np.uint8))
  with pytest.raises(DataError, match=msg) as e:
    read_rgb(path, 64)
  assert "s.png" in str(e.value)


def test_float_images_are_refused(tmp_path):
  path = _save(tmp_path / "f.tif", Image.fromarray(np.ones((40, 40), np.float32), "F"))
  with pytest.raises(DataError, match="no defined 8-bit RGB mapping"):
    read_rgb(path, None)


def test_missing_empty_broken_symlink_and_directory(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    read_rgb(str(tmp_path / "nope.png"), 32)
  (tmp_path / "z.png").write_bytes(b"")
  with pytest.raises(DataError, match=r"empty \(0 bytes\)"):
    read_rgb(str(tmp_path / "z.png"), 32)
  os.symlink(tmp_path / "gone.png", tmp_path / "broken.png")
  with pytest.raises(DataError, match="broken symlink"):
    read_rgb(str(tmp_path / "broken.png"), 32)
  os.mkdir(tmp_path / "d.png")
  with pytest.raises(DataError, match="not a regular file"):
    read_rgb(str(tmp_path / "d.png"), 32)
  # A symlink to a good image is followed.
  good = _save(tmp_path / "good.png", _rgb())
  os.symlink(good, tmp_path / "link.png")
  np.testing.assert_array_equal(read_rgb(str(tmp_path / "link.png"), None)[0], _rgb())


def test_truncated_png_and_jpeg_name_the_file(tmp_path):
  for fmt, ext in (("PNG", "png"), ("JPEG", "jpg")):
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buf, fmt)
    data = buf.getvalue()
    path = tmp_path / f"t.{ext}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"cannot read image .*t.{ext}"):
      read_rgb(str(path), 32)


def test_fuzz_never_crashes_and_never_returns_a_wrong_shape(tmp_path):
  """Random bytes and random damage to valid PNG/JPEG/BMP/TIFF files: either a uint8
  [32, 32, 3] image or a DataError naming the file, never another exception."""
  rng = np.random.default_rng(0)
  seeds = []
  for fmt in ("PNG", "JPEG", "BMP", "TIFF"):
    buf = io.BytesIO()
    Image.fromarray(_rgb(48, 48)).save(buf, fmt)
    seeds.append(buf.getvalue())
  outcomes = {"ok": 0, "refused": 0}
  for i in range(240):
    kind = i % 4
    if kind == 0:
      data = rng.integers(0, 256, int(rng.integers(1, 4096)), np.uint8).tobytes()
    else:
      data = bytearray(seeds[int(rng.integers(len(seeds)))])
      if kind == 1:
        data = data[: int(rng.integers(1, len(data)))]          # truncated
      else:
        for j in rng.integers(0, len(data), int(rng.integers(1, 20))):
          data[j] = int(rng.integers(0, 256))                   # bytes flipped
      data = bytes(data)
    path = tmp_path / f"f{i}.png"
    path.write_bytes(data)
    try:
      x, _ = read_rgb(str(path), 32)
    except DataError as e:
      assert f"f{i}.png" in str(e)
      outcomes["refused"] += 1
      continue
    assert x.dtype == np.uint8 and x.shape == (32, 32, 3)
    outcomes["ok"] += 1
  assert outcomes["refused"] > 50 and outcomes["ok"] > 5, outcomes


def test_expand_folder_glob_file_and_errors(tmp_path):
  (tmp_path / "a" / "good").mkdir(parents=True)
  (tmp_path / "a" / "bad").mkdir()
  p1 = _save(tmp_path / "a" / "good" / "1.png", _rgb())
  p2 = _save(tmp_path / "a" / "bad" / "2.png", _rgb())
  (tmp_path / "a" / "notes.txt").write_text("x")
  paths, root = images.expand(str(tmp_path / "a"))
  assert paths == sorted([p1, p2]) and root == str(tmp_path / "a")
  paths, _ = images.expand(str(tmp_path / "a" / "*" / "*.png"))
  assert paths == sorted([p1, p2])
  assert images.expand(p1)[0] == [p1]
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="no images"):
    images.expand(str(tmp_path / "empty"))
  with pytest.raises(DataError, match="no folder or file"):
    images.expand(str(tmp_path / "missing"))
  with pytest.raises(DataError, match="matches no files"):
    images.expand(str(tmp_path / "*.jpg"))


def test_clipped_share_hand_computed():
  from rodajax import data
  x = np.full((2, 4, 4, 3), 100, np.uint8)
  x[0, :2] = 255                      # half of image 0 white
  x[1, 0, 0] = (255, 255, 240)        # grey 250: clipped
  x[1, 0, 1] = (255, 255, 230)        # grey 246.7: not
  np.testing.assert_allclose(data.clipped_share(x), [0.5, 1 / 16])
  with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
    data.clipped_share(x[0])
