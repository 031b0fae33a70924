"""An independent PyTorch AWD-LSTM laid out as fastai v1 builds it (reference for the tests).

Plain torch.nn following fastai/text/models/awd_lstm.py and fastai/text/learner.py: an
nn.Embedding with padding_idx, one nn.LSTM per layer wrapped as WeightDropout (the raw
hidden-to-hidden weight in `weight_hh_l0_raw`, the LSTM under `.module`), a stateful hidden
state detached between calls, a LinearDecoder tied to the embedding, MultiBatchEncoder and
PoolingLinearClassifier. Evaluation mode only (the dropouts are identities there), which is
what the equivalence tests compare. Its `state_dict()` has fastai's names
('0.encoder.weight', '0.encoder_dp.emb.weight', '0.rnns.0.weight_hh_l0_raw',
'0.rnns.0.module.weight_ih_l0', ..., '1.decoder.weight', '1.decoder.bias').
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call


class EmbeddingDropout(nn.Module):
    def __init__(self, emb: nn.Embedding):
        super().__init__()
        self.emb = emb

    def forward(self, words):
        return nn.functional.embedding(words, self.emb.weight, self.emb.padding_idx)


class WeightDropout(nn.Module):
    """Holds the LSTM's hidden-to-hidden weight as `weight_hh_l0_raw` (eval: used as is)."""

    def __init__(self, module: nn.LSTM):
        super().__init__()
        self.module = module
        self.weight_hh_l0_raw = nn.Parameter(module.weight_hh_l0.detach().clone())

    def forward(self, x, hidden):
        params = dict(self.module.named_parameters())
        params["weight_hh_l0"] = self.weight_hh_l0_raw
        return functional_call(self.module, params, (x, hidden))


class AWD_LSTM(nn.Module):
    def __init__(self, vocab_sz, emb_sz, n_hid, n_layers, pad_token=1):
        super().__init__()
        self.emb_sz, self.n_hid, self.n_layers, self.bs = emb_sz, n_hid, n_layers, 1
        self.encoder = nn.Embedding(vocab_sz, emb_sz, padding_idx=pad_token)
        self.encoder_dp = EmbeddingDropout(self.encoder)
        self.rnns = nn.ModuleList([
            WeightDropout(nn.LSTM(emb_sz if l == 0 else n_hid, n_hid if l != n_layers - 1 else emb_sz, 1, batch_first=True))
            for l in range(n_layers)])
        self.encoder.weight.data.uniform_(-0.1, 0.1)
        self.reset()

    def forward(self, tokens):
        bs = tokens.size(0)
        if bs != self.bs:
            self.bs = bs
            self.reset()
        raw_output = self.encoder_dp(tokens)
        new_hidden, outputs = [], []
        for l, rnn in enumerate(self.rnns):
            raw_output, new_h = rnn(raw_output, self.hidden[l])
            new_hidden.append(new_h)
            outputs.append(raw_output)
        self.hidden = [(h.detach(), c.detach()) for h, c in new_hidden]
        return outputs, outputs

    def reset(self):
        sizes = [self.n_hid if l != self.n_layers - 1 else self.emb_sz for l in range(self.n_layers)]
        self.hidden = [(torch.zeros(1, self.bs, n), torch.zeros(1, self.bs, n)) for n in sizes]


class LinearDecoder(nn.Module):
    def __init__(self, n_out, n_hid, tie_encoder=None):
        super().__init__()
        self.decoder = nn.Linear(n_hid, n_out)
        self.decoder.bias.data.uniform_(-0.1, 0.1)  # fastai zeroes it; random here so the test sees it
        if tie_encoder is not None:
            self.decoder.weight = tie_encoder.weight

    def forward(self, inputs):
        raw_outputs, outputs = inputs
        return self.decoder(outputs[-1]), raw_outputs, outputs


def language_model(vocab_sz, emb_sz, n_hid, n_layers, pad_token=1) -> nn.Sequential:
    encoder = AWD_LSTM(vocab_sz, emb_sz, n_hid, n_layers, pad_token)
    return nn.Sequential(encoder, LinearDecoder(vocab_sz, emb_sz, tie_encoder=encoder.encoder))


class MultiBatchEncoder(nn.Module):
    def __init__(self, bptt, max_len, module, pad_idx=1):
        super().__init__()
        self.max_len, self.bptt, self.module, self.pad_idx = max_len, bptt, module, pad_idx

    def forward(self, tokens):
        bs, sl = tokens.size()
        self.module.reset()
        raw_outputs, outputs, masks = [], [], []
        for i in range(0, sl, self.bptt):
            r, o = self.module(tokens[:, i:min(i + self.bptt, sl)])
            if i > (sl - self.max_len):
                masks.append(tokens[:, i:min(i + self.bptt, sl)] == self.pad_idx)
                raw_outputs.append(r)
                outputs.append(o)
        concat = [torch.cat([o[l] for o in outputs], dim=1) for l in range(len(outputs[0]))]
        return concat, concat, torch.cat(masks, dim=1)


class PoolingLinearClassifier(nn.Module):
    def __init__(self, layers, drops):
        super().__init__()
        mods = []
        for k, (n_in, n_out, p) in enumerate(zip(layers[:-1], layers[1:], drops)):
            mods += [nn.BatchNorm1d(n_in), nn.Dropout(p), nn.Linear(n_in, n_out)]
            if k != len(layers) - 2:
                mods.append(nn.ReLU())
        self.layers = nn.Sequential(*mods)

    def forward(self, inputs):
        raw_outputs, outputs, mask = inputs
        output = outputs[-1]
        avg_pool = output.masked_fill(mask[:, :, None], 0).mean(dim=1)
        avg_pool *= output.size(1) / (output.size(1) - mask.float().sum(dim=1))[:, None]
        max_pool = output.masked_fill(mask[:, :, None], -float("inf")).max(dim=1)[0]
        x = torch.cat([output[:, -1], max_pool, avg_pool], 1)
        return self.layers(x), raw_outputs, outputs


def text_classifier(vocab_sz, n_class, emb_sz, n_hid, n_layers, bptt, max_len, lin_ftrs=(50,), pad_token=1):
    encoder = MultiBatchEncoder(bptt, max_len, AWD_LSTM(vocab_sz, emb_sz, n_hid, n_layers, pad_token), pad_token)
    head = PoolingLinearClassifier([3 * emb_sz, *lin_ftrs, n_class], [0.4] + [0.1] * len(lin_ftrs))
    return nn.Sequential(encoder, head)
