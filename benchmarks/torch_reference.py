"""PyTorch reference models with the same layer shapes as the jaxfast models benchmarked.

Benchmark-only (jaxfast never imports torch). Layouts: torchvision's ResNet-18/34/50,
lesson 7's MNIST ResNet (fastai v1 conv_layer = conv, ReLU, BN), fastai's cnn head and
DynamicUnet (module names as `jaxfast.models.unet`, so a strict import fills every weight),
an AWD-LSTM-shaped LM / classifier, fastai's TabularModel and EmbeddingDotBias.
`train_step` builds AdamW with fastai's setting (no decay on BatchNorm and biases), on the
CPU or (for benchmarks/device_bench.py) a GPU, optionally in bf16 autocast, channels-last.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided: torchvision v1.5) -> 1x1 with 4x expansion."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """torchvision's ResNet; `include_top=False` returns the feature map."""

    def __init__(self, stage_sizes, n_classes: int = 1000, include_top: bool = True, block=BasicBlock):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, n in enumerate(stage_sizes):  # torchvision's names: layer1.0.conv1.weight, ...
            planes, blocks = 64 * 2**i, []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if i > 0 and j == 0 else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.n_stages = len(stage_sizes)
        self.include_top = include_top
        self.fc = nn.Linear(cin, n_classes) if include_top else None

    def features(self, x) -> list:
        """The last map of each resolution: the stem (before the max pool), then each stage."""
        out = [F.relu(self.bn1(self.conv1(x)))]
        x = self.maxpool(out[0])
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
            out.append(x)
        return out

    def forward(self, x):
        x = self.features(x)[-1]
        return self.fc(x.mean((2, 3))) if self.include_top else x


def resnet18(n_classes=1000, include_top=True):
    return ResNet((2, 2, 2, 2), n_classes, include_top)


def resnet34(n_classes=1000, include_top=True):
    return ResNet((3, 4, 6, 3), n_classes, include_top)


def resnet50(n_classes=1000, include_top=True):
    return ResNet((3, 4, 6, 3), n_classes, include_top, block=Bottleneck)


def conv_layer(cin: int, cout: int, stride: int = 1, bn_zero: bool = False) -> nn.Sequential:
    """fastai v1 conv_layer: 3x3 conv (no bias), ReLU, BatchNorm."""
    bn = nn.BatchNorm2d(cout)
    if bn_zero:
        nn.init.zeros_(bn.weight)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.ReLU(), bn)


class ResBlock(nn.Module):
    def __init__(self, nf: int):
        super().__init__()
        self.conv1, self.conv2 = conv_layer(nf, nf), conv_layer(nf, nf, bn_zero=True)

    def forward(self, x):
        return x + self.conv2(self.conv1(x))


def mnist_resnet(widths=(8, 16, 32, 16), n_classes=10) -> nn.Sequential:
    """lesson7-resnet-mnist's model on [B, 1, 28, 28] images."""
    layers, cin = [], 1
    for w in widths:
        layers += [conv_layer(cin, w, 2), ResBlock(w)]
        cin = w
    return nn.Sequential(*layers, conv_layer(cin, n_classes, 2), nn.Flatten())


class CnnHead(nn.Module):
    """fastai create_head: concat pool, BN, dropout .25, linear 512, ReLU, BN, dropout .5, linear."""

    def __init__(self, nf: int, n_classes: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.BatchNorm1d(2 * nf), nn.Dropout(0.25), nn.Linear(2 * nf, 512), nn.ReLU(),
            nn.BatchNorm1d(512), nn.Dropout(0.5), nn.Linear(512, n_classes))

    def forward(self, x):
        return self.layers(torch.cat([x.amax((2, 3)), x.mean((2, 3))], 1))


def cnn(body: nn.Module, nf: int, n_classes: int, freeze_body: bool) -> nn.Sequential:
    """body + head; a frozen body keeps its BatchNorm layers trainable (fastai's train_bn)."""
    if freeze_body:
        for m in body.modules():
            if not isinstance(m, nn.BatchNorm2d):
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)
    return nn.Sequential(body, CnnHead(nf, n_classes))


class UnetConv(nn.Module):
    """fastai v1 conv_layer(norm_type=None): conv with bias (kaiming normal, zero bias), ReLU."""

    def __init__(self, cin: int, cout: int, ks: int = 3, activation: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, padding=(ks - 1) // 2)
        nn.init.kaiming_normal_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.activation = activation

    def forward(self, x):
        x = self.conv(x)
        return F.relu(x) if self.activation else x


class PixelShuffleICNR(nn.Module):
    """fastai's PixelShuffle_ICNR: 1x1 conv to cout * 4 (ICNR init), ReLU, PixelShuffle(2), blur."""

    def __init__(self, cin: int, cout: int, blur: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout * 4, 1)
        base = nn.init.kaiming_normal_(torch.empty(cout, cin, 1, 1))
        with torch.no_grad():  # ICNR: out channels 4c .. 4c+3 start equal
            self.conv.weight.copy_(base.repeat_interleave(4, dim=0))
            self.conv.bias.zero_()
        self.blur = blur

    def forward(self, x):
        x = F.pixel_shuffle(F.relu(self.conv(x)), 2)
        return F.avg_pool2d(F.pad(x, (1, 0, 1, 0), mode="replicate"), 2, stride=1) if self.blur else x


def batchnorm_2d(n: int) -> nn.BatchNorm2d:
    """fastai's batchnorm_2d: the bias starts at 1e-3."""
    bn = nn.BatchNorm2d(n)
    nn.init.constant_(bn.bias, 1e-3)
    return bn


class UnetBlock(nn.Module):
    def __init__(self, up_in_c: int, x_in_c: int, final_div: bool, blur: bool):
        super().__init__()
        self.shuf = PixelShuffleICNR(up_in_c, up_in_c // 2, blur)
        self.bn = batchnorm_2d(x_in_c)
        ni = up_in_c // 2 + x_in_c
        self.n_out = ni if final_div else ni // 2
        self.conv1, self.conv2 = UnetConv(ni, self.n_out), UnetConv(self.n_out, self.n_out)

    def forward(self, up_in, skip):
        up_out = self.shuf(up_in)
        if up_out.shape[-2:] != skip.shape[-2:]:
            up_out = F.interpolate(up_out, skip.shape[-2:], mode="nearest")
        return self.conv2(self.conv1(F.relu(torch.cat([up_out, self.bn(skip)], 1))))


class UnetResBlock(nn.Module):
    def __init__(self, n: int, bottle: bool = False):
        super().__init__()
        inner = n // 2 if bottle else n
        self.conv1, self.conv2 = UnetConv(n, inner), UnetConv(inner, n)

    def forward(self, x):
        return x + self.conv2(self.conv1(x))


class DynamicUnet(nn.Module):
    """fastai v1 unet_learner's model (norm_type=None, last_cross) on a ResNet `encoder`."""

    def __init__(self, encoder: ResNet, n_classes: int, blur: bool = False, blur_final: bool = True):
        super().__init__()
        self.encoder = encoder
        expansion = encoder.layer1[0].expansion
        widths = [64] + [64 * 2**i * expansion for i in range(encoder.n_stages)]
        n = widths[-1]
        self.bn = batchnorm_2d(n)
        self.middle = nn.Sequential(UnetConv(n, 2 * n), UnetConv(2 * n, n))
        blocks = []
        for i, skip_c in enumerate(reversed(widths[:-1])):
            not_final = i != len(widths) - 2
            blocks.append(UnetBlock(n, skip_c, not_final, blur and (not_final or blur_final)))
            n = blocks[-1].n_out
        self.blocks = nn.ModuleList(blocks)
        self.shuf = PixelShuffleICNR(n, n)
        n_in = encoder.conv1.in_channels
        self.res = UnetResBlock(n + n_in)
        self.final = UnetConv(n + n_in, n_classes, ks=1, activation=False)

    def forward(self, x):
        *skips, y = self.encoder.features(x)
        y = self.middle(F.relu(self.bn(y)))
        for block, skip in zip(self.blocks, reversed(skips)):
            y = block(y, skip)
        y = self.shuf(y)
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, x.shape[-2:], mode="nearest")
        return self.final(self.res(torch.cat([y, x], 1)))


def unet(encoder: str = "resnet34", n_classes: int = 2, **kwargs) -> DynamicUnet:
    encoders = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}
    return DynamicUnet(encoders[encoder](include_top=False), n_classes, **kwargs)


class LstmEncoder(nn.Module):
    """Embedding, then stacked LSTMs emb -> hidden ... -> emb (AWD-LSTM's widths), dropout between."""

    def __init__(self, vocab: int, emb: int, hidden: int, n_layers: int, dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        sizes = [emb] + [hidden] * (n_layers - 1) + [emb]
        self.rnns = nn.ModuleList(nn.LSTM(sizes[i], sizes[i + 1], batch_first=True) for i in range(n_layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens):
        x = self.embedding(tokens)
        for rnn in self.rnns:
            x = self.dropout(rnn(x)[0])
        return x


class LstmLM(nn.Module):
    def __init__(self, vocab=10_000, emb=400, hidden=256, n_layers=3, dropout=0.1, tied=True):
        super().__init__()
        self.encoder = LstmEncoder(vocab, emb, hidden, n_layers, dropout)
        self.decoder = nn.Linear(emb, vocab)
        if tied:
            self.decoder.weight = self.encoder.embedding.weight

    def forward(self, tokens):
        return self.decoder(self.encoder(tokens))


class LstmClassifier(nn.Module):
    """Encoder + fastai's PoolingLinearClassifier: [last, max, mean] -> BN/drop/50/ReLU -> BN/drop/n."""

    def __init__(self, vocab=10_000, emb=400, hidden=256, n_layers=3, dropout=0.1, n_classes=2):
        super().__init__()
        self.encoder = LstmEncoder(vocab, emb, hidden, n_layers, dropout)
        self.head = nn.Sequential(
            nn.BatchNorm1d(3 * emb), nn.Dropout(0.4), nn.Linear(3 * emb, 50), nn.ReLU(),
            nn.BatchNorm1d(50), nn.Dropout(0.1), nn.Linear(50, n_classes))

    def forward(self, tokens):
        x = self.encoder(tokens)
        return self.head(torch.cat([x[:, -1], x.amax(1), x.mean(1)], 1))


class TabularModel(nn.Module):
    """fastai v1 TabularModel: embeddings + BN(cont), then [BN (not first), dropout, linear, ReLU]."""

    def __init__(self, emb_szs, n_cont: int, out_sz: int, layers=(200, 100), ps=(0.0, 0.0)):
        super().__init__()
        self.embeds = nn.ModuleList(nn.Embedding(n, w) for n, w in emb_szs)
        self.bn_cont = nn.BatchNorm1d(n_cont)
        sizes = [sum(w for _, w in emb_szs) + n_cont, *layers, out_sz]
        mods = []
        for i, p in enumerate([0.0, *ps]):
            if i != 0:
                mods.append(nn.BatchNorm1d(sizes[i]))
            if p:
                mods.append(nn.Dropout(p))
            mods.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(layers):
                mods.append(nn.ReLU())
        self.layers = nn.Sequential(*mods)

    def forward(self, x_cat, x_cont):
        x = torch.cat([e(x_cat[:, i]) for i, e in enumerate(self.embeds)] + [self.bn_cont(x_cont)], 1)
        return self.layers(x)


class EmbeddingDotBias(nn.Module):
    def __init__(self, n_users: int, n_items: int, n_factors: int = 40, y_range=(0.0, 5.5)):
        super().__init__()
        self.u_weight, self.i_weight = nn.Embedding(n_users, n_factors), nn.Embedding(n_items, n_factors)
        self.u_bias, self.i_bias = nn.Embedding(n_users, 1), nn.Embedding(n_items, 1)
        for e in (self.u_weight, self.i_weight, self.u_bias, self.i_bias):
            nn.init.trunc_normal_(e.weight, std=0.01)
        self.y_range = y_range

    def forward(self, users, items):
        dot = (self.u_weight(users) * self.i_weight(items)).sum(1)
        res = dot + self.u_bias(users)[:, 0] + self.i_bias(items)[:, 0]
        lo, hi = self.y_range
        return torch.sigmoid(res) * (hi - lo) + lo


def adamw(model: nn.Module, lr: float, wd: float = 1e-2, eps: float = 1e-5, betas=(0.9, 0.99)):
    """AdamW over trainable params, without weight decay on BatchNorm params and biases."""
    decay, no_decay, seen = [], [], set()
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:  # a tied weight is listed once
                continue
            seen.add(id(p))
            bn = isinstance(m, nn.modules.batchnorm._BatchNorm)
            (no_decay if bn or name == "bias" else decay).append(p)
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, eps=eps)


def train_step(model: nn.Module, loss_fn, inputs: tuple, targets, *, device: str = "cpu",
               autocast_dtype: torch.dtype | None = None, channels_last: bool = False, **opt_kwargs):
    """A zero-argument eager train step (forward, loss, backward, AdamW) returning the loss.

    `device` moves model and batch there; `autocast_dtype` (e.g. torch.bfloat16) runs the
    forward in torch.autocast (mixed precision, the loss in fp32); `channels_last` is the
    NHWC memory format that cuDNN's tensor-core convolutions prefer."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    inputs = tuple(x.to(device, memory_format=memory_format) if channels_last and x.dim() == 4 else x.to(device)
                   for x in inputs)
    targets = targets.to(device)
    model.train()
    opt = adamw(model, **opt_kwargs)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(*inputs)
        loss = loss_fn(out.float(), targets)
        loss.backward()
        opt.step()
        return loss.item()  # waits for the device: every step is timed to its end

    return step


def lm_loss(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
