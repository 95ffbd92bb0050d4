"""BiSeNet face parser (CelebAMask-HQ, 19 classes) in the layout of the public ``79999_iter.pth``.

The module and parameter names follow that checkpoint so its state dict loads as is: a ResNet-18
context path (``cp.resnet``), two attention-refinement modules, a feature-fusion module fed with
the 1/8 backbone features in place of a spatial path, and three output heads (only ``conv_out``
is used at inference). ``width`` scales every channel count (64 = the published network);
`BiSeNet.from_state_dict` reads it, and the class count, from the weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Sequential):
    """Convolution without bias, batch norm, ReLU (keys ``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)


class BasicBlock(nn.Module):
    """ResNet basic block; ``downsample`` is a 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))


class Resnet18(nn.Module):
    """ResNet-18 trunk returning the 1/8, 1/16 and 1/32 feature maps."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _stage(width, width, 1)
        self.layer2 = _stage(width, 2 * width, 2)
        self.layer3 = _stage(2 * width, 4 * width, 2)
        self.layer4 = _stage(4 * width, 8 * width, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


def _global_pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3), keepdim=True)


class AttentionRefinementModule(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(_global_pool(feat))))


class ContextPath(nn.Module):
    def __init__(self, width: int = 64):
        super().__init__()
        mid = 2 * width
        self.resnet = Resnet18(width)
        self.arm16 = AttentionRefinementModule(4 * width, mid)
        self.arm32 = AttentionRefinementModule(8 * width, mid)
        self.conv_head32 = ConvBNReLU(mid, mid)
        self.conv_head16 = ConvBNReLU(mid, mid)
        self.conv_avg = ConvBNReLU(8 * width, mid, kernel=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        context = self.conv_avg(_global_pool(feat32))
        up32 = self.arm32(feat32) + context
        up32 = self.conv_head32(F.interpolate(up32, size=feat16.shape[2:], mode="nearest"))
        up16 = self.arm16(feat16) + up32
        up16 = self.conv_head16(F.interpolate(up16, size=feat8.shape[2:], mode="nearest"))
        return feat8, up16


class FeatureFusionModule(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, kernel=1)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        attention = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_pool(feat)))))
        return feat + feat * attention


class BiSeNetOutput(nn.Module):
    def __init__(self, cin: int, mid: int, classes: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Face parser: image normalised with ImageNet statistics -> per-class logits at input size."""

    def __init__(self, classes: int = 19, width: int = 64):
        super().__init__()
        self.cp = ContextPath(width)
        self.ffm = FeatureFusionModule(4 * width, 4 * width)
        self.conv_out = BiSeNetOutput(4 * width, 4 * width, classes)
        # Auxiliary heads of the training recipe: kept so the checkpoint loads strictly.
        self.conv_out16 = BiSeNetOutput(2 * width, width, classes)
        self.conv_out32 = BiSeNetOutput(2 * width, width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat8, context8 = self.cp(x)
        logits = self.conv_out(self.ffm(feat8, context8))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=True)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> BiSeNet:
        """Build the network whose shapes match ``state`` and load it (``module.`` prefixes dropped).

        Raises ``ValueError`` naming the keys when the state dict is not a BiSeNet face parser.
        """
        state = {key.removeprefix("module."): value for key, value in state.items()}
        try:
            width = int(state["cp.resnet.conv1.weight"].shape[0])
            classes = int(state["conv_out.conv_out.weight"].shape[0])
        except (KeyError, AttributeError, IndexError) as error:
            raise ValueError(f"not a BiSeNet face-parsing state dict (missing {error})") from error
        model = cls(classes=classes, width=width)
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as error:  # a tensor of the wrong shape
            raise ValueError(f"not a BiSeNet face-parsing state dict: {error}") from error
        missing = [key for key in result.missing_keys if not key.endswith("num_batches_tracked")]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"not a BiSeNet face-parsing state dict: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
        return model.eval()
