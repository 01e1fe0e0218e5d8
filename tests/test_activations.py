"""Dead units: the activation monitor, find_dead_units on our, torchvision's and timm's models, the alarm."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
import torchvision
from torch import nn

from analysis import TrainConfig, Trainer
from analysis.instruments.activations import ActivationMonitor, prepool_layer
from analysis.instruments.dead_units import DeadUnitAlarm, dead_channels, find_dead_units
from inception_models import create_model
from inception_models.layers import ConvNormAct

pytestmark = pytest.mark.usefixtures("one_thread")


KILLED = {"block2": [1, 5], "block3": [0, 7, 11]}


class SmallNet(nn.Module):
    """Three ConvNormAct blocks (nn.ReLU modules), global pool, classifier, with timm's forward_features."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = ConvNormAct(3, 8, 3, padding=1)
        self.block2 = ConvNormAct(8, 12, 3, stride=2, padding=1)
        self.block3 = ConvNormAct(12, 16, 3, padding=1)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(16, 4)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.block3(self.block2(self.block1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.global_pool(self.forward_features(x)), 1)))


def kill(bn: nn.BatchNorm2d, channels: list[int]) -> None:
    """A BN bias of -100 before a ReLU: the channel is negative everywhere (|normalised value| < 100 here)."""
    with torch.no_grad():
        bn.bias[channels] = -100.0


def batches(n: int = 3, size: int = 16, batch: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 4, (batch,), generator=g))
            for _ in range(n)]


def no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._forward_hooks_always_called
               and not m._forward_hooks_with_kwargs and not m._backward_hooks for m in model.modules())


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key


# ---------------------------------------------------------------------------------------- our modules
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_killed_channels_are_found_exactly(mode):
    torch.manual_seed(0)
    model = SmallNet()
    kill(model.block2.bn, KILLED["block2"])
    kill(model.block3.bn, KILLED["block3"])
    frame = find_dead_units(model, batches(), mode=mode)
    assert frame["layer"].tolist() == ["block1.act", "block2.act", "block3.act"]
    assert frame["dead"].tolist() == [0, 2, 3]
    assert frame["channels"].tolist() == [8, 12, 16]
    assert frame["dead_fraction"].tolist() == [0.0, 2 / 12, 3 / 16]
    assert (frame["samples"] == 12).all() and (frame["mode"] == mode).all()
    assert (frame["dormant"] == frame["dead"]).all()  # tau = 0: dormant == dead for ReLUs
    found = dead_channels(model, batches(), mode=mode)
    assert found == {"block1.act": [], "block2.act": [1, 5], "block3.act": [0, 7, 11]}
    # the pre-pool layer is block3's output, seen as the global pool's input
    assert dead_channels(model, batches(), layers="prepool", mode=mode) == {"global_pool:input": [0, 7, 11]}


def test_healthy_model_has_no_dead_units_and_statistics_are_exact():
    torch.manual_seed(0)
    model = SmallNet()
    data = batches()
    frame = find_dead_units(model, data, mode="train")
    assert frame["dead"].sum() == 0 and frame["dormant"].sum() == 0
    # the running statistics equal those of the stored activations
    model.train()
    saved = snapshot(model)
    with torch.no_grad():
        acts = torch.cat([model.forward_features(x) for x, _ in data])
    model.load_state_dict(saved)
    with ActivationMonitor(model, ["block3.act", "prepool"]) as monitor, torch.no_grad():
        for x, _ in data:
            model(x)
    model.load_state_dict(saved)
    for name in ("block3.act", "global_pool:input"):
        stats = monitor.stats[name]
        assert torch.equal(stats.positive, (acts > 0).sum((0, 2, 3)))
        assert torch.equal(stats.zeros, (acts == 0).sum((0, 2, 3)))
        assert torch.allclose(stats.total, acts.double().sum((0, 2, 3)))
        assert torch.equal(stats.maximum, acts.amax((0, 2, 3)))
        assert stats.elements == 12 * 8 * 8 and stats.samples == 12 and stats.batches == 3
    row = monitor.to_frame().set_index("layer").loc["block3.act"]
    assert row["zero_fraction"] == pytest.approx(float((acts == 0).double().mean()))


def test_dormant_follows_redo_normalised_score():
    model = nn.Sequential(nn.Conv2d(1, 3, 1, bias=True), nn.ReLU())
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([0.1, 1.0, 1.9]))  # mean |a| = 0.1, 1.0, 1.9; layer mean 1.0
    x = torch.zeros(2, 1, 4, 4)
    frame = find_dead_units(model, [x], dormant_threshold=0.2).iloc[0]
    assert frame["dead"] == 0 and frame["dormant"] == 1 and frame["dormant_threshold"] == 0.2
    assert find_dead_units(model, [x], dormant_threshold=0.05).iloc[0]["dormant"] == 0
    channels = ActivationMonitor(model)
    model(x)
    scores = channels.channel_frame()["dormant_score"].tolist()
    channels.remove()
    assert scores == pytest.approx([0.1, 1.0, 1.9])


def test_eval_and_train_mode_differ_and_are_recorded():
    """A running mean of 100 kills a channel in eval mode only: train mode normalises by batch statistics."""
    torch.manual_seed(0)
    model = SmallNet()
    with torch.no_grad():
        model.block3.bn.running_mean[4] = 100.0
    train = dead_channels(model, batches(), layers="block3.act", mode="train")
    evaluated = dead_channels(model, batches(), layers="block3.act", mode="eval")
    assert train == {"block3.act": []} and evaluated == {"block3.act": [4]}
    assert find_dead_units(model, batches(), layers="block3.act", mode="train")["mode"].tolist() == ["train"]
    assert find_dead_units(model, batches(), layers="block3.act", mode="eval")["mode"].tolist() == ["eval"]


def test_model_is_unchanged_and_hooks_are_gone():
    torch.manual_seed(0)
    model = SmallNet()
    model.eval()
    model.block1.train()  # mixed flags must come back as they were
    before = snapshot(model)
    rng = torch.get_rng_state()
    find_dead_units(model, batches(), mode="train")  # train-mode forwards update BN running stats and draw dropout
    assert_same_state(model, before)
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model.training and model.block1.training and not model.block2.training
    assert no_hooks_left(model)
    with ActivationMonitor(model, method="dispatch"):
        assert not no_hooks_left(model)
    assert no_hooks_left(model) and torch._C._len_torch_dispatch_stack() == 0
    with ActivationMonitor(model, preserve_state=True) as monitor:  # the monitor's own forwards, in train mode
        model.train()
        model(batches(1)[0][0])
        assert not torch.equal(model.block1.bn.running_mean, before["block1.bn.running_mean"])
    assert monitor.layers == ["block1.act", "block2.act", "block3.act"]
    assert_same_state(model, before)
    assert not model.training and model.block1.training and no_hooks_left(model)


def test_dispatch_mode_is_left_when_the_forward_raises():
    model = SmallNet()
    monitor = ActivationMonitor(model, method="dispatch")
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 5, 8, 8))  # wrong channel count: the first conv raises
    assert torch._C._len_torch_dispatch_stack() == 0
    model(torch.randn(2, 3, 8, 8))
    assert monitor.layers == ["block1.act:relu", "block2.act:relu", "block3.act:relu"]
    monitor.remove()
    assert no_hooks_left(model) and torch._C._len_torch_dispatch_stack() == 0


def test_bad_layer_names_and_batches_are_clear_errors():
    model = SmallNet()
    with pytest.raises(ValueError, match="no submodule 'block9'"):
        ActivationMonitor(model, ["block9"])
    with pytest.raises(ValueError, match="after ':'"):
        ActivationMonitor(model, ["block1:output"])
    with pytest.raises(ValueError, match="batches is empty"):
        find_dead_units(model, [])
    with pytest.raises(ValueError, match="'train'"):
        find_dead_units(model, batches(1), mode="training")
    with pytest.raises(TypeError, match="input tensor"):
        find_dead_units(model, [{"x": torch.randn(1, 3, 8, 8)}])
    with pytest.raises(ValueError, match="global pool|before pooling"):
        prepool_layer(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()))
    assert no_hooks_left(model)


# -------------------------------------------------------------------------------- torchvision and timm
def test_torchvision_googlenet_functional_relus():
    """torchvision's GoogLeNet has no nn.ReLU: every F.relu(inplace=True) is seen, named by its owner."""
    torch.manual_seed(0)
    model = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False, num_classes=10)
    kill(model.inception5b.branch1.bn, [3])
    kill(model.inception4c.branch3[1].bn, [2, 9])
    before = snapshot(model)
    x = torch.randn(4, 3, 64, 64)
    frame = find_dead_units(model, [x], mode="train")
    convs = [n for n, m in model.named_modules() if type(m).__name__ == "BasicConv2d"]
    assert frame["layer"].tolist() == [f"{n}:relu" for n in convs] and len(convs) == 57
    assert frame.set_index("layer")["dead"][lambda s: s > 0].to_dict() == {
        "inception4c.branch3.1:relu": 2, "inception5b.branch1:relu": 1}
    found = dead_channels(model, [x], layers=["inception4c.branch3.1:relu", "prepool"], mode="train")
    assert found == {"inception4c.branch3.1:relu": [2, 9], "avgpool:input": [3]}  # branch1 comes first in the cat
    assert prepool_layer(model) == "avgpool:input"
    assert_same_state(model, before)
    assert no_hooks_left(model) and torch._C._len_torch_dispatch_stack() == 0


def test_torchvision_googlenet_aux_head_relu_is_seen_in_train_mode_only():
    torch.manual_seed(0)
    model = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    train = find_dead_units(model, [x], mode="train")["layer"].tolist()
    assert "aux1:relu" in train and "aux2:relu" in train  # F.relu(self.fc1(x)) inside InceptionAux.forward
    assert len(train) == 57 + 2 * 2
    evaluated = find_dead_units(model, [x], mode="eval")["layer"].tolist()
    assert not any(n.startswith("aux") for n in evaluated)


def test_torchvision_inception_v3_prepool_channel_found():
    torch.manual_seed(0)
    model = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=10)
    kill(model.Mixed_7c.branch_pool.bn, [5])
    before = snapshot(model)
    x = torch.randn(2, 3, 75, 75)
    # Mixed_7c concatenates branch1x1 (320), branch3x3 (768), branch3x3dbl (768), branch_pool (192)
    found = dead_channels(model, [x], layers=["prepool", "Mixed_7c.branch_pool:relu"], mode="train")
    assert found == {"avgpool:input": [320 + 768 + 768 + 5], "Mixed_7c.branch_pool:relu": [5]}
    frame = find_dead_units(model, [x], mode="train")
    assert len(frame) == 94 and frame["dead"].sum() == 1
    assert_same_state(model, before)
    assert no_hooks_left(model)


def test_timm_inception_v3_relu_modules_and_prepool():
    torch.manual_seed(0)
    model = timm.create_model("inception_v3", pretrained=False, num_classes=10)
    kill(model.Mixed_7c.branch_pool.bn, [5])
    x = torch.randn(2, 3, 75, 75)
    assert prepool_layer(model) == "global_pool:input"
    found = dead_channels(model, [x], layers=["prepool"], mode="train")
    assert found == {"global_pool:input": [1861]}
    frame = find_dead_units(model, [x], mode="train")
    assert len(frame) == 94 and frame.set_index("layer")["dead"].to_dict()["Mixed_7c.branch_pool.bn.act"] == 1
    assert frame["dead"].sum() == 1
    assert no_hooks_left(model)


def test_prepool_of_our_zoo_is_forward_features():
    torch.manual_seed(0)
    model = create_model("googlenet", num_classes=10).eval()
    assert prepool_layer(model) == "global_pool:input"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
    with ActivationMonitor(model, ["prepool"]) as monitor, torch.no_grad():
        model(x)
    stats = monitor.stats["global_pool:input"]
    assert stats.channels == features.shape[1] == 1024
    assert torch.equal(stats.positive, (features > 0).sum((0, 2, 3)))


# ------------------------------------------------------------------------------------------ the alarm
class FakeTrainer:
    """The callback protocol of analysis.callbacks, driven by hand."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.step, self.metrics, self.stop_reason = model, 0, [], None
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def log_metrics(self, values):
        self.metrics.append((self.step, dict(values)))

    def request_stop(self, reason):
        self.stop_reason = reason


def run_fake(model: nn.Module, alarm: DeadUnitAlarm, steps: int, die_at: int) -> FakeTrainer:
    trainer = FakeTrainer(model)
    alarm.on_train_start(trainer)
    data = batches(steps, size=8)
    model.train()
    for step, (x, y) in enumerate(data):
        if step == die_at:
            kill(model.block3.bn, list(range(16)))  # the whole pre-pool layer dies
        loss = nn.functional.cross_entropy(model(x), y)
        trainer.optimizer.zero_grad()
        loss.backward()
        alarm.on_after_backward(trainer, (x, y), loss.detach())
        model.eval()
        with torch.no_grad():
            model(x + 10)  # an evaluation forward: must not be counted
        model.train()
        trainer.step += 1
        alarm.on_step_end(trainer, (x, y), loss.detach())
        if trainer.stop_reason:
            break
    alarm.on_train_end(trainer)
    return trainer


def test_alarm_fires_and_logs_on_a_run_that_dies(caplog):
    torch.manual_seed(0)
    model = SmallNet()
    alarm = DeadUnitAlarm(every=2, threshold=1.0)
    with caplog.at_level(logging.WARNING, logger="analysis.instruments.dead_units"):
        trainer = run_fake(model, alarm, steps=10, die_at=5)
    # windows are steps 1-2, 3-4, 5-6 (dies in the forward of step 6), ...: first all-dead window ends at step 8
    assert [s for s, _ in trainer.metrics] == [2, 4, 6, 8, 10]
    fractions = [m["dead_fraction"] for _, m in trainer.metrics]
    assert fractions == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert alarm.alarm_step == 8 and trainer.stop_reason is None
    assert "dead_alarm" in trainer.metrics[3][1] and "dead_alarm" not in trainer.metrics[4][1]
    assert "died by step 8" in caplog.text and "global_pool:input" in caplog.text
    frame = alarm.to_frame()
    assert frame["samples"].tolist() == [8] * 5  # 2 training batches of 4 per window, no eval or extra forwards
    assert (frame["mode"] == "train").all()
    assert no_hooks_left(model)


def test_alarm_requests_a_stop_and_stays_quiet_on_a_healthy_run():
    torch.manual_seed(0)
    trainer = run_fake(SmallNet(), DeadUnitAlarm(every=1, threshold=0.5, stop=True), steps=10, die_at=3)
    assert trainer.step == 4 and "died by step 4" in trainer.stop_reason
    torch.manual_seed(0)
    healthy = DeadUnitAlarm(every=3)
    trainer = run_fake(SmallNet(), healthy, steps=9, die_at=-1)
    assert healthy.alarm_step is None and trainer.stop_reason is None
    assert [m["dead_units"] for _, m in trainer.metrics] == [0, 0, 0]


def test_alarm_with_the_real_trainer_stops_a_dying_run():
    """The classic dying ReLU: positive inputs and a huge learning rate push every pre-pool unit negative."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.act = nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()
            self.global_pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.global_pool(self.act(self.conv(x))), 1))

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 8, 8, generator=g) + 2.0, torch.randint(0, 4, (64,), generator=g)
    torch.manual_seed(0)
    alarm = DeadUnitAlarm(every=2, stop=True)
    config = TrainConfig(steps=40, batch_size=8, lr=30.0, momentum=0.0, device="cpu", seed=0,
                         log_every=1, progress=False)
    history = Trainer(Net(), config, (x, y), callbacks=[alarm]).fit()
    assert alarm.alarm_step is not None and alarm.alarm_step < 40
    train = history[history["split"] == "train"]
    assert train["step"].max() == alarm.alarm_step  # stopped right after the alarm
    assert train.set_index("step").loc[alarm.alarm_step, "dead_fraction"] == 1.0
    assert train["dead_fraction"].dropna().iloc[0] == 0.0  # alive at the start


def test_alarm_counts_only_the_training_forward_beside_a_landscape_probe():
    """The probe runs K extra train-mode forwards per step and the trainer evaluates: neither enters the window."""
    from analysis.instruments.line_search import LandscapeProbe

    g = torch.Generator().manual_seed(0)
    data = (torch.randn(32, 3, 16, 16, generator=g), torch.randint(0, 4, (32,), generator=g))
    torch.manual_seed(0)
    alarm = DeadUnitAlarm(every=2)
    config = TrainConfig(steps=4, batch_size=4, lr=0.01, device="cpu", seed=0, eval_every=1,
                         log_every=1, progress=False)
    Trainer(SmallNet(), config, data, val_data=data,
            callbacks=[LandscapeProbe(every=1, num_points=2), alarm]).fit()
    frame = alarm.to_frame()
    assert frame["step"].tolist() == [2, 4] and frame["samples"].tolist() == [8, 8]
    assert (frame["mode"] == "train").all() and frame["dead"].tolist() == [0, 0]
