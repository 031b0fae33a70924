"""Lesson 7's restoration pieces in plain PyTorch, for the U-Net + feature-loss benchmark.

torchvision is not needed: `vgg16_bn_features` is torchvision's `vgg16_bn().features`
written by hand (conv3x3-BN-ReLU blocks [64, 64, M, 128, 128, M, 256 x3, M, 512 x3, M,
512 x3, M], same module indices, so its state_dict keys are torchvision's `features.{i}.*`
and `jaxfast.models.convert` fills jaxfast's VGG from it), cut after the last hooked layer
as jaxfast's VGG is (fastai runs the whole `features`: one more 2x2 max-pool).
`FeatureLoss` is fastai v1 lesson7-superres's: pixel L1 + `w * L1(features)` +
`w**2 * 5e3 * L1(gram)` on features 22, 32, 42 weighted [5, 15, 2], the VGG frozen in eval
mode. `SigmoidRange` is fastai's y_range squashing of the U-Net's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jaxfast.models.vgg import FEATURE_LOSS_LAYERS, VGG16_LAYOUT

LAYER_WEIGHTS = (5.0, 15.0, 2.0)
GRAM_SCALE = 5e3


def vgg16_bn_features(last: int = FEATURE_LOSS_LAYERS[-1]) -> nn.Sequential:
    """torchvision's vgg16_bn `features` up to index `last` (inclusive), frozen, in eval mode;
    BN statistics drawn at random (a trained network's are not 0 and 1)."""
    layers, cin = [], 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, item, kernel_size=3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
            cin = item
    features = nn.Sequential(*layers[: last + 1])
    with torch.no_grad():
        for m in features.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    for p in features.parameters():
        p.requires_grad_(False)
    return features.eval()


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.size()
    x = x.view(n, c, -1)
    return (x @ x.transpose(1, 2)) / (c * h * w)


class FeatureLoss(nn.Module):
    """fastai v1's FeatureLoss(m_feat, layer_ids, layer_wgts) on NCHW images -> a scalar."""

    def __init__(self, features: nn.Sequential, layer_ids=FEATURE_LOSS_LAYERS, layer_wgts=LAYER_WEIGHTS):
        super().__init__()
        self.features, self.layer_ids, self.wgts = features, tuple(layer_ids), tuple(layer_wgts)

    def train(self, mode: bool = True):  # the VGG stays in eval mode when the model trains
        super().train(mode)
        self.features.eval()
        return self

    def make_features(self, x, clone: bool = False) -> list:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.layer_ids:
                out.append(x.clone() if clone else x)
        return out

    def forward(self, preds, targets):
        out_feat = self.make_features(targets, clone=True)
        in_feat = self.make_features(preds)
        losses = [F.l1_loss(preds, targets)]
        losses += [F.l1_loss(a, b) * w for a, b, w in zip(in_feat, out_feat, self.wgts)]
        losses += [F.l1_loss(gram_matrix(a), gram_matrix(b)) * w**2 * GRAM_SCALE
                   for a, b, w in zip(in_feat, out_feat, self.wgts)]
        return sum(losses)


class SigmoidRange(nn.Module):
    """fastai's y_range: sigmoid(model(x)) * (hi - lo) + lo."""

    def __init__(self, model: nn.Module, lo: float, hi: float):
        super().__init__()
        self.model, self.lo, self.hi = model, lo, hi

    def forward(self, x):
        return torch.sigmoid(self.model(x)) * (self.hi - self.lo) + self.lo
