"""channels_last is honoured inside the training step when asked for, and off by default.

A callback sees the batch the model is fed and the model's parameters after the backward pass; a forward hook
sees the stem convolution's output. A 4-D tensor with more than one channel and more than one pixel is either
contiguous in the default (NCHW) layout or in channels_last (NHWC), never both, so each check can fail.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from analysis import Callback, TrainConfig, Trainer
from inception_models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

CHANNELS_LAST = torch.channels_last


class MemoryFormatProbe(Callback):
    """Records, at every step, the layouts of the batch, of the stem's output and of every conv weight."""

    def __init__(self) -> None:
        self.steps: list[dict[str, object]] = []
        self._stem_output: torch.Tensor | None = None

    def on_train_start(self, trainer):
        stem = next(m for m in trainer.model.modules() if isinstance(m, nn.Conv2d))
        stem.register_forward_hook(lambda _m, _i, out: setattr(self, "_stem_output", out))

    def on_after_backward(self, trainer, batch, loss):
        inputs, stem_out = batch[0], self._stem_output
        weights = {name: p for name, p in trainer.model.named_parameters() if p.dim() == 4}
        self.steps.append({
            "batch": (inputs.is_contiguous(memory_format=CHANNELS_LAST), inputs.is_contiguous()),
            "stem_output": (stem_out.is_contiguous(memory_format=CHANNELS_LAST), stem_out.is_contiguous()),
            # A k x k (k > 1) weight over several input channels tells the layouts apart; a 1 x 1 one cannot.
            "spatial_weights": {(p.is_contiguous(memory_format=CHANNELS_LAST), p.is_contiguous())
                                for p in weights.values() if p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1},
            "all_weights_channels_last": all(p.is_contiguous(memory_format=CHANNELS_LAST) for p in weights.values()),
        })


def train_with_probe(**overrides) -> list[dict[str, object]]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 4, (16,), generator=g))
    model = create_model("googlenet", num_classes=4, aux_logits=True, width_mult=0.125)
    probe = MemoryFormatProbe()
    config = TrainConfig(steps=2, batch_size=8, device="cpu", progress=False, **overrides)
    Trainer(model, config, data, callbacks=[probe]).fit()
    assert len(probe.steps) == 2  # before and after the first optimiser step
    return probe.steps


def test_channels_last_reaches_the_batch_the_activations_and_the_parameters():
    for step in train_with_probe(channels_last=True):
        assert step["batch"] == (True, False)
        assert step["stem_output"] == (True, False)
        assert step["spatial_weights"] == {(True, False)}
        assert step["all_weights_channels_last"]


def test_channels_last_is_off_by_default_on_the_cpu():
    assert TrainConfig(steps=1).resolved("cpu").channels_last is False  # "auto": on CUDA only
    for step in train_with_probe():
        assert step["batch"] == (False, True)
        assert step["stem_output"] == (False, True)
        assert step["spatial_weights"] == {(False, True)}
