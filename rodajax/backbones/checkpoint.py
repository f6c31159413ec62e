"""Read PyTorch / safetensors / npz checkpoints into numpy, without torch.

A checkpoint is untrusted input: PyTorch files are pickles, and a pickle can
run arbitrary code. `load_state_dict` therefore uses a restricted unpickler that
rebuilds tensors as numpy arrays and refuses every global it does not know
(`collections.OrderedDict`, torch's tensor/parameter rebuild helpers and
storage types), with an error that names the refused global.

Both PyTorch formats are read:
  * the zip format (torch >= 1.6): `<name>/data.pkl` + one raw file per storage;
  * the legacy format: magic number, protocol, sys-info, the main pickle, a
    pickle of storage keys, then for each key an int64 element count followed
    by the raw little-endian bytes.
"""
from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

try:  # ml_dtypes ships with jax; it gives numpy a bfloat16.
  import ml_dtypes
  _BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
  _BF16 = None

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": _BF16,
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

_SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": _BF16, "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


class CheckpointError(ValueError):
  """A checkpoint file that cannot be read safely or does not fit a model."""


class _StorageType:
  """Stands in for `torch.FloatStorage` & co inside the unpickler."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = _STORAGE_DTYPES[name]


class _Storage:
  """A flat typed buffer; `array` is filled when its bytes are read."""

  def __init__(self, dtype: np.dtype, numel: int | None):
    self.dtype = dtype
    self.numel = numel
    self.array: np.ndarray | None = None


class _LazyTensor:
  """A tensor whose storage bytes may come after the pickle (legacy format)."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

  def materialize(self) -> np.ndarray:
    buf = self.storage.array
    if buf is None:
      raise CheckpointError("a tensor refers to a storage whose bytes are missing")
    extent = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride) if n > 0)
    if any(n == 0 for n in self.size):
      return np.zeros(self.size, buf.dtype)
    if extent >= buf.size or self.offset < 0 or min(self.stride, default=0) < 0:
      raise CheckpointError(
          f"tensor of size {self.size} / stride {self.stride} at offset "
          f"{self.offset} reads past its storage of {buf.size} elements: the file is corrupt")
    item = buf.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        buf[self.offset:], shape=self.size, strides=[s * item for s in self.stride])
    return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  if not isinstance(storage, _Storage):
    raise CheckpointError("tensor rebuilt from something that is not a storage")
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
  return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that knows tensors and dicts, and nothing else."""

  def __init__(self, file, persistent_load):
    super().__init__(file, encoding="utf-8")
    self._persistent = persistent_load

  def find_class(self, module, name):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES and _STORAGE_DTYPES[name] is not None:
      return _StorageType(name)
    raise CheckpointError(
        f"refusing to unpickle global '{module}.{name}': a weight file should hold "
        "only tensors and dicts, and loading other objects could run arbitrary code. "
        "Re-save the file as a plain state_dict (torch.save(model.state_dict(), path)) "
        "or as .safetensors / .npz.")

  def persistent_load(self, pid):
    return self._persistent(pid)


def _storage_dtype(storage_type) -> np.dtype:
  if isinstance(storage_type, _StorageType):
    return storage_type.dtype
  raise CheckpointError(f"unknown storage type {storage_type!r} in checkpoint")


def _as_str(x):
  return x.decode("ascii") if isinstance(x, bytes) else x


def _materialize(obj):
  if isinstance(obj, _LazyTensor):
    return obj.materialize()
  if isinstance(obj, dict):
    return type(obj)((k, _materialize(v)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialize(v) for v in obj)
  return obj


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl")]
    if not pkl:
      raise CheckpointError(f"{path}: zip file without data.pkl, not a PyTorch checkpoint")
    prefix = pkl[0][: -len("data.pkl")]
    storages: dict[str, _Storage] = {}

    def persistent_load(pid):
      if _as_str(pid[0]) != "storage":
        raise CheckpointError(f"unsupported persistent id {pid[0]!r}")
      storage_type, key, _location, numel = pid[1:5]
      key = _as_str(key)
      if key not in storages:
        dtype = _storage_dtype(storage_type)
        try:
          raw = zf.read(f"{prefix}data/{key}")
        except KeyError as e:
          raise CheckpointError(f"{path}: storage {key} is missing from the archive") from e
        st = _Storage(dtype, numel)
        st.array = np.frombuffer(raw, dtype=dtype)
        storages[key] = st
      return storages[key]

    with zf.open(pkl[0]) as f:
      obj = _RestrictedUnpickler(io.BytesIO(f.read()), persistent_load).load()
  return _materialize(obj)


def _load_legacy(path: str) -> Any:
  with open(path, "rb") as f:
    def plain_load():
      return _RestrictedUnpickler(f, lambda pid: (_ for _ in ()).throw(
          CheckpointError("unexpected persistent id in header"))).load()

    try:
      magic = plain_load()
    except CheckpointError:
      raise
    except Exception as e:
      raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if magic != _LEGACY_MAGIC:
      raise CheckpointError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    plain_load()  # protocol version
    plain_load()  # sys info
    storages: dict[str, _Storage] = {}

    def persistent_load(pid):
      if _as_str(pid[0]) != "storage":
        raise CheckpointError(f"unsupported persistent id {pid[0]!r}")
      storage_type, root_key, _location, numel, view_metadata = pid[1:6]
      root_key = _as_str(root_key)
      if root_key not in storages:
        storages[root_key] = _Storage(_storage_dtype(storage_type), numel)
      if view_metadata is not None:
        raise CheckpointError("storage views in legacy checkpoints are not supported; re-save the file")
      return storages[root_key]

    obj = _RestrictedUnpickler(f, persistent_load).load()
    keys = plain_load()
    for key in keys:
      key = _as_str(key)
      if key not in storages:
        raise CheckpointError(f"{path}: storage key {key} listed but never used")
      st = storages[key]
      header = f.read(8)
      if len(header) != 8:
        raise CheckpointError(f"{path}: file ends before storage {key}; it is truncated")
      (numel,) = struct.unpack("<q", header)
      nbytes = numel * st.dtype.itemsize
      raw = f.read(nbytes)
      if len(raw) != nbytes:
        raise CheckpointError(f"{path}: file ends inside storage {key}; it is truncated")
      st.array = np.frombuffer(raw, dtype=st.dtype)
  return _materialize(obj)


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) != 8:
      raise CheckpointError(f"{path}: too short to be a safetensors file")
    (n,) = struct.unpack("<Q", head)
    try:
      header = json.loads(f.read(n))
    except Exception as e:
      raise CheckpointError(f"{path}: unreadable safetensors header ({e})") from e
    data = f.read()
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
    if dtype is None:
      raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    if end > len(data):
      raise CheckpointError(f"{path}: tensor {name} reads past the end of the file")
    out[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(info["shape"]).copy()
  return out


def _unwrap(obj: Any, path: str) -> dict[str, np.ndarray]:
  """Finds the state dict inside common wrappers ({'state_dict': ...}, {'model': ...})."""
  if isinstance(obj, dict):
    for key in ("state_dict", "model", "model_state_dict"):
      if key in obj and isinstance(obj[key], dict):
        obj = obj[key]
        break
  if not isinstance(obj, dict) or not obj:
    raise CheckpointError(f"{path}: holds no state dict (found {type(obj).__name__})")
  out = {}
  for k, v in obj.items():
    if not isinstance(v, np.ndarray):
      continue
    k = str(k)
    out[k[len("module."):] if k.startswith("module.") else k] = v
  if not out:
    raise CheckpointError(f"{path}: holds no tensors")
  return out


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a checkpoint file into a flat `{key: np.ndarray}` state dict.

  Args:
    path: a PyTorch `.pth`/`.pt` (zip or legacy), `.safetensors` or `.npz` file.

  Returns:
    The state dict, keys as PyTorch names them (a leading `module.` removed).

  Raises:
    FileNotFoundError: the file does not exist.
    CheckpointError: the file is corrupt, truncated, or asks for a global that
      is not a tensor.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"weight file {path!r} does not exist; pass the path of a torchvision .pth, "
        ".safetensors or .npz checkpoint")
  with open(path, "rb") as f:
    magic = f.read(4)
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as z:
        return _unwrap({k: z[k] for k in z.files}, path)
    except Exception as e:
      raise CheckpointError(f"{path}: unreadable .npz ({e})") from e
  if path.endswith(".safetensors"):
    return _unwrap(_load_safetensors(path), path)
  try:
    if magic[:2] == b"PK":
      return _unwrap(_load_zip(path), path)
    return _unwrap(_load_legacy(path), path)
  except CheckpointError as e:
    if path in str(e):
      raise
    raise CheckpointError(f"{path}: {e}") from e
  except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, struct.error,
          ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
    raise CheckpointError(f"{path}: corrupt or not a PyTorch checkpoint ({type(e).__name__}: {e})") from e
