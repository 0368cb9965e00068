"""ResNet trunk (torchvision parameter names) returning C2..C5, with MMDetection's caffe style and freezing."""
from __future__ import annotations

import torchvision
from torch import Tensor, nn


class ResNetBackbone(nn.Module):
    """torchvision ResNet without avgpool/fc; ``forward`` returns the outputs of layer1..layer4 (strides 4..32).

    caffe_style: the stride-2 of each stage's first bottleneck sits on its 1x1 ``conv1`` instead of the 3x3
    ``conv2`` (mmdet ``style='caffe'``, the layout of Detectron's ResNet-50 that QDTrack's weights come from).
    frozen_stages: mmdet semantics; -1 nothing, 0 the stem, k the stem and layer1..layer{k} (no gradients, eval).
    frozen_bn: every BatchNorm stays in eval mode and its affine parameters get no gradients.
    """

    def __init__(self, depth: int = 50, caffe_style: bool = True, frozen_stages: int = 1, frozen_bn: bool = True):
        super().__init__()
        resnet = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        expansion = 4 if depth >= 50 else 1
        self.out_channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        if caffe_style:
            for layer in (self.layer2, self.layer3, self.layer4):
                first = layer[0]
                if not isinstance(first, torchvision.models.resnet.Bottleneck):
                    raise ValueError("caffe_style needs a bottleneck ResNet (depth >= 50)")
                stride = first.conv2.stride
                first.conv1.stride, first.conv2.stride = stride, (1, 1)
        self.frozen_stages = frozen_stages
        self.frozen_bn = frozen_bn
        for module in self._frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        if frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    for p in m.parameters():
                        p.requires_grad_(False)
        self.train()

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        stem = [self.conv1, self.bn1]
        return stem + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def train(self, mode: bool = True) -> "ResNetBackbone":
        super().train(mode)
        # Frozen parts keep using their stored BN statistics even while the rest trains (mmdet norm_eval).
        for module in self._frozen_modules():
            module.eval()
        if self.frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]

