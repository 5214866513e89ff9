"""A PyTorch ResNet v1.5 written from the architecture table in dcjax/models/resnet.py: the
reference of the ResNet train-step benchmark (dcjax.bench.models) and the oracle of
tests/test_resnet.py. Needs PyTorch (the CPU build is enough)."""

import numpy as np
import torch
from torch import nn

from dcjax.models.resnet import DEPTHS, STAGES, WIDTHS
from dcjax.models.sobel import SOBEL_X, SOBEL_Y


class Block(nn.Module):
    def __init__(self, cin, width, stride, bottleneck):
        super().__init__()
        self.bottleneck = bottleneck
        out = width * (4 if bottleneck else 1)
        if bottleneck:
            self.convs = nn.ModuleList([nn.Conv2d(cin, width, 1, bias=False),
                                        nn.Conv2d(width, width, 3, stride, 1, bias=False),
                                        nn.Conv2d(width, out, 1, bias=False)])
        else:
            self.convs = nn.ModuleList([nn.Conv2d(cin, width, 3, stride, 1, bias=False),
                                        nn.Conv2d(width, width, 3, 1, 1, bias=False)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(c.out_channels) for c in self.convs])
        self.down = None
        if stride != 1 or cin != out:
            self.down = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False),
                                      nn.BatchNorm2d(out))

    def forward(self, x):
        y = x
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            y = bn(conv(y))
            if i < len(self.convs) - 1:
                y = torch.relu(y)
        return torch.relu(y + (self.down(x) if self.down is not None else x))


class TorchResNet(nn.Module):
    """torchvision's ResNet v1.5 layout, from the table in dcjax/models/resnet.py."""

    def __init__(self, depth, num_classes, cifar_stem, sobel):
        super().__init__()
        self.sobel = sobel
        # Fixed, moved with the module (.to(device)), never trained.
        self.register_buffer("sobel_kernel", torch.from_numpy(np.stack([SOBEL_X, SOBEL_Y])[:, None]))
        cin = 2 if sobel else 3
        self.cifar_stem = cifar_stem
        self.conv1 = (nn.Conv2d(cin, 64, 3, 1, 1, bias=False) if cifar_stem
                      else nn.Conv2d(cin, 64, 7, 2, 3, bias=False))
        self.bn1 = nn.BatchNorm2d(64)
        bottleneck = depth >= 50
        self.stages = nn.ModuleList()
        c = 64
        for s, (width, blocks) in enumerate(zip(WIDTHS, DEPTHS[depth])):
            stage = []
            for b in range(blocks):
                stage.append(Block(c, width, 2 if (s > 0 and b == 0) else 1, bottleneck))
                c = width * (4 if bottleneck else 1)
            self.stages.append(nn.Sequential(*stage))
        self.top_layer = nn.Linear(c, num_classes)

    def forward(self, x):
        if self.sobel:
            gray = x.mean(1, keepdim=True)
            x = nn.functional.conv2d(gray, self.sobel_kernel, padding=1)
        x = torch.relu(self.bn1(self.conv1(x)))
        if not self.cifar_stem:
            x = nn.functional.max_pool2d(x, 3, 2, 1)
        out = {}
        for name, stage in zip(STAGES, self.stages):
            x = stage(x)
            out[name] = x
        out["pool"] = x.mean((2, 3))
        out["logits"] = self.top_layer(out["pool"])
        return out
