"""PyTorch ResNets v1.5 written from the architecture table in dcjax/models/resnet.py, with
torchvision's module names (conv1, bn1, layer1-4 of blocks conv1..3 / bn1..3 / downsample, fc) so
their state dicts are torchvision's layout; `TorchDeepClusterV2` adds the projection head and the
prototype layers under the names of swav's `src/resnet50.py` (projection_head, prototypes.prototypesN).
The reference of the ResNet train-step benchmark (dcjax.bench.models) and the oracle of
tests/test_resnet.py and tests/test_interop.py. Needs PyTorch (the CPU build is enough)."""

import numpy as np
import torch
from torch import nn

from dcjax.models.resnet import DEPTHS, STAGES, WIDTHS
from dcjax.models.sobel import SOBEL_X, SOBEL_Y


class Block(nn.Module):
    def __init__(self, cin, width, stride, bottleneck):
        super().__init__()
        out = width * (4 if bottleneck else 1)
        if bottleneck:  # v1.5: the stride in the 3x3 conv
            convs = [nn.Conv2d(cin, width, 1, bias=False),
                     nn.Conv2d(width, width, 3, stride, 1, bias=False),
                     nn.Conv2d(width, out, 1, bias=False)]
        else:
            convs = [nn.Conv2d(cin, width, 3, stride, 1, bias=False),
                     nn.Conv2d(width, width, 3, 1, 1, bias=False)]
        self.n = len(convs)
        for i, conv in enumerate(convs, start=1):
            setattr(self, f"conv{i}", conv)
            setattr(self, f"bn{i}", nn.BatchNorm2d(conv.out_channels))
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x):
        y = x
        for i in range(1, self.n + 1):
            y = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(y))
            if i < self.n:
                y = torch.relu(y)
        return torch.relu(y + (self.downsample(x) if self.downsample is not None else x))


class TorchResNet(nn.Module):
    """torchvision's ResNet v1.5 layout, from the table in dcjax/models/resnet.py; `num_classes`
    None: no `fc` (a trunk, as swav's ResNet with a projection head)."""

    def __init__(self, depth, num_classes, cifar_stem, sobel):
        super().__init__()
        self.sobel = sobel
        # Fixed, moved with the module (.to(device)), never trained, not in the state dict.
        self.register_buffer("sobel_kernel", torch.from_numpy(
            np.stack([SOBEL_X, SOBEL_Y])[:, None]), persistent=False)
        cin = 2 if sobel else 3
        self.cifar_stem = cifar_stem
        self.conv1 = (nn.Conv2d(cin, 64, 3, 1, 1, bias=False) if cifar_stem
                      else nn.Conv2d(cin, 64, 7, 2, 3, bias=False))
        self.bn1 = nn.BatchNorm2d(64)
        bottleneck = depth >= 50
        c = 64
        for s, (width, blocks) in enumerate(zip(WIDTHS, DEPTHS[depth])):
            stage = []
            for b in range(blocks):
                stage.append(Block(c, width, 2 if (s > 0 and b == 0) else 1, bottleneck))
                c = width * (4 if bottleneck else 1)
            setattr(self, f"layer{s + 1}", nn.Sequential(*stage))
        self.feature_dim = c
        self.fc = nn.Linear(c, num_classes) if num_classes else None

    def forward(self, x):
        if self.sobel:
            gray = x.mean(1, keepdim=True)
            x = nn.functional.conv2d(gray, self.sobel_kernel, padding=1)
        x = torch.relu(self.bn1(self.conv1(x)))
        if not self.cifar_stem:
            x = nn.functional.max_pool2d(x, 3, 2, 1)
        out = {}
        for s, name in enumerate(STAGES):
            x = getattr(self, f"layer{s + 1}")(x)
            out[name] = x
        out["pool"] = x.mean((2, 3))
        if self.fc is not None:
            out["logits"] = self.fc(out["pool"])
        return out


class Prototypes(nn.Module):
    def __init__(self, dim, ks):
        super().__init__()
        self.ks = ks
        for i, k in enumerate(ks):
            setattr(self, f"prototypes{i}", nn.Linear(dim, k, bias=False))

    def forward(self, z):
        return [getattr(self, f"prototypes{i}")(z) for i in range(len(self.ks))]


class TorchDeepClusterV2(TorchResNet):
    """The trunk, projection_head = Linear -> BatchNorm1d -> ReLU -> Linear, L2-normalised, and one
    bias-free prototype layer per head: {'pool', 'projection', 'scores': [per head], stages}."""

    def __init__(self, depth, cifar_stem, sobel, hidden_dim, feat_dim, prototypes):
        super().__init__(depth, None, cifar_stem, sobel)
        self.projection_head = nn.Sequential(nn.Linear(self.feature_dim, hidden_dim),
                                             nn.BatchNorm1d(hidden_dim), nn.ReLU(),
                                             nn.Linear(hidden_dim, feat_dim))
        self.prototypes = Prototypes(feat_dim, tuple(prototypes))

    def forward(self, x):
        out = super().forward(x)
        z = nn.functional.normalize(self.projection_head(out["pool"]), dim=1)
        return {**out, "projection": z, "scores": self.prototypes(z)}
