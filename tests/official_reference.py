"""A PyTorch ShuffleNet v1 written from the official implementation's description, for tests/test_weights.py.

Run with a Python that has PyTorch (not the package's)::

    python3 tests/official_reference.py OUT_DIR 1.0x:3 0.5x:8 ...

For each configuration it builds the network that megvii-model/ShuffleNet-Series
(``ShuffleNetV1/network.py`` and ``blocks.py``) describes, with the same
module names, gives it random weights and batch-norm statistics, saves
``{'state_dict': ...}`` of it wrapped in ``nn.DataParallel`` (keys
``module.…``) as the official ``train.py`` does, and writes the logits of a
random BGR 0..255 input:

- ``OUT_DIR/<config>.pth.tar``: the checkpoint (legacy pickle layout for
  g = 3, zip layout for g = 8, so that both layouts are tested);
- ``OUT_DIR/<config>_input.npy``: the input, NHWC float32;
- ``OUT_DIR/<config>_logits.npy``: the logits.

Also writes ``OUT_DIR/<config>_params.txt``: the parameter count.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
from torch import nn

# The official `stage_out_channels` table: (scale, groups) -> (stem, stage 2, 3, 4).
WIDTHS = {
    ("0.5x", 3): (12, 120, 240, 480),
    ("1.0x", 3): (24, 240, 480, 960),
    ("1.5x", 3): (24, 360, 720, 1440),
    ("2.0x", 3): (48, 480, 960, 1920),
    ("0.5x", 8): (16, 192, 384, 768),
    ("1.0x", 8): (24, 384, 768, 1536),
    ("1.5x", 8): (24, 576, 1152, 2304),
    ("2.0x", 8): (48, 768, 1536, 3072),
}


class Unit(nn.Module):
    """1x1 (group) conv, BN, ReLU, depthwise 3x3, BN; shuffle; 1x1 group conv, BN; add or concat."""

    def __init__(self, inp: int, oup: int, groups: int, first_group: bool, stride: int) -> None:
        super().__init__()
        self.groups, self.stride = groups, stride
        mid = oup // 4
        branch = oup - inp if stride == 2 else oup
        self.branch_main_1 = nn.Sequential(
            nn.Conv2d(inp, mid, 1, 1, 0, groups=1 if first_group else groups, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
        )
        self.branch_main_2 = nn.Sequential(
            nn.Conv2d(mid, branch, 1, 1, 0, groups=groups, bias=False),
            nn.BatchNorm2d(branch),
        )
        if stride == 2:
            self.branch_proj = nn.AvgPool2d(3, 2, padding=1)  # count_include_pad=True by default.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch_main_1(x)
        if self.groups > 1:
            # Channels as (C / g, g), then swapped.
            b, c, h, w = y.shape
            y = y.reshape(b, c // self.groups, self.groups, h, w).permute(0, 2, 1, 3, 4).reshape(b, c, h, w)
        y = self.branch_main_2(y)
        if self.stride == 1:
            return torch.relu(x + y)
        return torch.cat((self.branch_proj(x), torch.relu(y)), 1)


class ShuffleNetV1(nn.Module):
    def __init__(self, scale: str, groups: int, classes: int = 1000) -> None:
        super().__init__()
        stem, *stages = WIDTHS[(scale, groups)]
        self.first_conv = nn.Sequential(nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(True))
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        units, inp = [], stem
        for stage, (repeats, oup) in enumerate(zip((4, 8, 4), stages, strict=True)):
            for i in range(repeats):
                units.append(Unit(inp, oup, groups, first_group=stage == 0 and i == 0, stride=2 if i == 0 else 1))
                inp = oup
        self.features = nn.Sequential(*units)
        self.globalpool = nn.AvgPool2d(7)
        self.classifier = nn.Sequential(nn.Linear(stages[-1], classes, bias=False))
        self.width = stages[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.maxpool(self.first_conv(x)))
        return self.classifier(self.globalpool(x).view(-1, self.width))


def randomize(model: nn.Module, generator: torch.Generator) -> None:
    """Random weights; batch-norm statistics from a batch of random images, so activations keep a sane scale."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.weight[0].numel()
            module.weight.data = torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.data = 0.5 + torch.rand(module.weight.shape, generator=generator)
            module.bias.data = 0.2 * torch.randn(module.bias.shape, generator=generator)
            module.momentum = None  # Cumulative average over the calibration batch.
        elif isinstance(module, nn.Linear):
            module.weight.data = torch.randn(module.weight.shape, generator=generator) / module.weight.shape[1] ** 0.5
    model.train()
    with torch.no_grad():
        model(torch.rand((4, 3, 224, 224), generator=generator) * 255.0)
    model.eval()


def main(out_dir: str, configs: list[str]) -> None:
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)
    for index, config in enumerate(configs):
        scale, groups = config.split(":")
        groups = int(groups)
        generator = torch.Generator().manual_seed(1234 + index)
        model = ShuffleNetV1(scale, groups)
        randomize(model, generator)
        name = f"{scale}_g{groups}"
        torch.save(
            {"state_dict": nn.DataParallel(model).state_dict()},
            os.path.join(out_dir, f"{name}.pth.tar"),
            _use_new_zipfile_serialization=groups != 3,
        )
        image = torch.rand((2, 3, 224, 224), generator=generator) * 255.0  # BGR, 0..255, as ToBGRTensor.
        with torch.no_grad():
            logits = model(image)
        np.save(os.path.join(out_dir, f"{name}_input.npy"), image.permute(0, 2, 3, 1).numpy())
        np.save(os.path.join(out_dir, f"{name}_logits.npy"), logits.numpy())
        params = sum(p.numel() for p in model.parameters())
        with open(os.path.join(out_dir, f"{name}_params.txt"), "w") as handle:
            handle.write(f"{params}\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
