"""fastai v1's AWD-LSTM in PyTorch eager with its five dropouts, for the train-step benchmark.

Built on tests/torch_awd_lstm.py (the independent torch twin checked equal to
jaxfast.models.awd_lstm to 1e-5 in eval mode) by adding what fastai's training mode does,
as fastai/text/models/awd_lstm.py writes it: EmbeddingDropout (a Bernoulli mask over the
vocabulary rows times the whole embedding matrix, rescaled), RNNDropout (one mask per
sequence, constant over time) on the input, between layers and before the decoder, and
WeightDropout (F.dropout of each raw hidden-to-hidden matrix, one draw per call). The
classifier's head dropouts are the twin's nn.Dropout modules. In eval mode every dropout
is off and the models compute the twin's function (tests/test_benchmark_references.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import torch_awd_lstm as twin  # noqa: E402 - the tests' twin, one directory over


def dropout_mask(x: torch.Tensor, shape, p: float) -> torch.Tensor:
    """fastai's dropout_mask: Bernoulli(1 - p) / (1 - p) of `shape`."""
    return x.new_empty(*shape).bernoulli_(1 - p).div_(1 - p)


def rnn_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """fastai's RNNDropout on [B, T, D]: one mask [B, 1, D] per sequence."""
    if not training or p == 0.0:
        return x
    return x * dropout_mask(x.detach(), (x.size(0), 1, x.size(2)), p)


class TrainWeightDropout(twin.WeightDropout):
    """fastai's WeightDropout: the raw hidden-to-hidden weight through F.dropout when training."""

    def __init__(self, module: nn.LSTM, weight_p: float):
        super().__init__(module)
        self.weight_p = weight_p
        module.weight_hh_l0.requires_grad_(False)  # fastai deletes it; the raw copy is the parameter

    def forward(self, x, hidden):
        params = dict(self.module.named_parameters())
        params["weight_hh_l0"] = F.dropout(self.weight_hh_l0_raw, self.weight_p, self.training)
        return functional_call(self.module, params, (x, hidden))


class TrainAWDLSTM(twin.AWD_LSTM):
    """fastai's AWD_LSTM.forward with embed_p, input_p, hidden_p and weight_p."""

    def __init__(self, vocab_sz, emb_sz, n_hid, n_layers, pad_token=1, hidden_p=0.2, input_p=0.6, embed_p=0.1,
                 weight_p=0.5):
        super().__init__(vocab_sz, emb_sz, n_hid, n_layers, pad_token)
        self.rnns = nn.ModuleList(TrainWeightDropout(rnn.module, weight_p) for rnn in self.rnns)
        self.hidden_p, self.input_p, self.embed_p = hidden_p, input_p, embed_p

    def embed(self, tokens):
        weight = self.encoder.weight
        if self.training and self.embed_p:
            weight = weight * dropout_mask(weight.detach(), (weight.size(0), 1), self.embed_p)
        return rnn_dropout(F.embedding(tokens, weight, self.encoder.padding_idx), self.input_p, self.training)

    def forward(self, tokens):
        if tokens.size(0) != self.bs:
            self.bs = tokens.size(0)
            self.reset()
        output = self.embed(tokens)
        new_hidden, raw_outputs, outputs = [], [], []
        for layer, rnn in enumerate(self.rnns):
            output, new_h = rnn(output, self.hidden[layer])
            new_hidden.append(new_h)
            raw_outputs.append(output)
            if layer != self.n_layers - 1:
                output = rnn_dropout(output, self.hidden_p, self.training)
            outputs.append(output)
        self.hidden = [(h.detach(), c.detach()) for h, c in new_hidden]
        return raw_outputs, outputs


class TrainLinearDecoder(twin.LinearDecoder):
    """fastai's LinearDecoder: RNNDropout(output_p) before the (tied) decoder; zero bias as fastai."""

    def __init__(self, n_out, n_hid, output_p, tie_encoder=None):
        super().__init__(n_out, n_hid, tie_encoder)
        self.output_p = output_p
        nn.init.zeros_(self.decoder.bias)

    def forward(self, inputs):
        raw_outputs, outputs = inputs
        return self.decoder(rnn_dropout(outputs[-1], self.output_p, self.training)), raw_outputs, outputs


class Logits(nn.Module):
    """The first output of a fastai model (its logits), as the loss takes it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens):
        return self.model(tokens)[0]


def language_model(vocab_sz, emb_sz=400, n_hid=1152, n_layers=3, pad_token=1, output_p=0.1, hidden_p=0.15,
                   input_p=0.25, embed_p=0.02, weight_p=0.2) -> nn.Module:
    """fastai's get_language_model(AWD_LSTM, awd_lstm_lm_config): tied decoder -> logits [B, T, vocab]."""
    encoder = TrainAWDLSTM(vocab_sz, emb_sz, n_hid, n_layers, pad_token, hidden_p, input_p, embed_p, weight_p)
    return Logits(nn.Sequential(encoder, TrainLinearDecoder(vocab_sz, emb_sz, output_p, encoder.encoder)))


def text_classifier(vocab_sz, n_class, emb_sz=400, n_hid=1152, n_layers=3, pad_token=1, output_p=0.4, hidden_p=0.3,
                    input_p=0.4, embed_p=0.05, weight_p=0.5, bptt=70, max_len=70 * 20) -> nn.Module:
    """fastai's get_text_classifier(AWD_LSTM, awd_lstm_clas_config): MultiBatchEncoder over bptt
    chunks + PoolingLinearClassifier([3 * emb_sz, 50, n_class], [output_p, 0.1]) -> logits."""
    encoder = TrainAWDLSTM(vocab_sz, emb_sz, n_hid, n_layers, pad_token, hidden_p, input_p, embed_p, weight_p)
    head = twin.PoolingLinearClassifier([3 * emb_sz, 50, n_class], [output_p, 0.1])
    return Logits(nn.Sequential(twin.MultiBatchEncoder(bptt, max_len, encoder, pad_token), head))
