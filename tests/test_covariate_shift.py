"""Santurkar et al.'s internal covariate shift (Definition 2.1): G' against a closed form on a two-layer linear net
and against finite differences on a small conv net with batch norm; the step rules; the state left untouched;
the trainer callback."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from analysis.instruments.covariate_shift import (
    ICS_COLUMNS,
    CovariateShiftProbe,
    internal_covariate_shift,
    model_layers,
    optimizer_rule,
    sgd_rule,
)
from analysis.training.config import TrainConfig
from analysis.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _half_squared_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((out - target) ** 2).sum(1).mean()


class _DeepLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 3, bias=False)
        self.second = nn.Linear(3, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_g_prime_matches_the_closed_form_of_a_two_layer_linear_net():
    torch.manual_seed(0)
    model = _DeepLinear().double()
    x, t = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    lr = 0.3
    frame = internal_covariate_shift(model, _half_squared_error, x, t, sgd_rule(lr))
    assert list(frame.columns) == ICS_COLUMNS and frame["layer"].tolist() == ["first", "second"]

    # By hand, with X as columns: L = |W2 W1 X - T|^2 / 2N, G1 = W2^T R X^T / N, G2 = R (W1 X)^T / N.
    w1, w2 = model.first.weight.detach().numpy(), model.second.weight.detach().numpy()
    xs, ts, n = x.numpy().T, t.numpy().T, x.shape[0]
    residual = w2 @ w1 @ xs - ts
    g1, g2 = w2.T @ residual @ xs.T / n, residual @ (w1 @ xs).T / n
    w1_after = w1 - lr * g1  # Definition 2.1: the layers before the second have taken their step
    g2_after = (w2 @ w1_after @ xs - ts) @ (w1_after @ xs).T / n

    first, second = frame.iloc[0], frame.iloc[1]
    assert first["shift"] == 0.0 and first["cosine"] == pytest.approx(1.0) and first["upstream_update"] == 0.0
    assert second["grad_norm"] == pytest.approx(np.linalg.norm(g2), rel=1e-10)
    assert second["grad_norm_after"] == pytest.approx(np.linalg.norm(g2_after), rel=1e-10)
    assert second["shift"] == pytest.approx(np.linalg.norm(g2 - g2_after), rel=1e-10)
    assert second["shift_rel"] == pytest.approx(np.linalg.norm(g2 - g2_after) / np.linalg.norm(g2), rel=1e-10)
    assert second["cosine"] == pytest.approx(_cos(g2, g2_after), rel=1e-10)
    assert second["upstream_update"] == pytest.approx(lr * np.linalg.norm(g1), rel=1e-10)
    assert second["loss"] == pytest.approx(0.5 * (residual ** 2).sum() / n, rel=1e-10)
    assert second["shift"] > 1e-3  # the check above is not vacuous


class _ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.block3 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block3(self.block2(self.block1(x))))


def _conv_setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    model = _ConvBN().double().train()
    return model, torch.randn(6, 2, 5, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])


def _numerical_gradient(loss_of, params: list[torch.Tensor], h: float = 1e-6) -> list[torch.Tensor]:
    """Central differences, one coordinate at a time: independent of autograd."""
    out = []
    with torch.no_grad():
        for p in params:
            grad = torch.zeros_like(p)
            flat, gflat = p.view(-1), grad.view(-1)
            for k in range(flat.numel()):
                keep = float(flat[k])
                flat[k] = keep + h
                up = loss_of()
                flat[k] = keep - h
                down = loss_of()
                flat[k] = keep
                gflat[k] = (up - down) / (2 * h)
            out.append(grad)
    return out


def test_g_prime_matches_finite_differences_under_batch_norm():
    model, x, y = _conv_setup()
    criterion, lr = nn.CrossEntropyLoss(), 0.5
    frame = internal_covariate_shift(model, criterion, x, y, sgd_rule(lr), measure=["block3"])
    assert frame["layer"].tolist() == ["block3"] and frame["depth"].tolist() == [2]

    def loss_of() -> float:
        return float(criterion(model(x), y))

    earlier = [p for block in (model.block1, model.block2) for p in block.parameters()]
    mine = list(model.block3.parameters())
    saved = [p.detach().clone() for p in earlier]
    g_earlier = _numerical_gradient(loss_of, earlier)
    g_before = _numerical_gradient(loss_of, mine)
    with torch.no_grad():
        for p, g in zip(earlier, g_earlier):
            p.sub_(lr * g)  # Definition 2.1: the blocks before block3 take their SGD step
    g_after = _numerical_gradient(loss_of, mine)
    with torch.no_grad():
        for p, w in zip(earlier, saved):
            p.copy_(w)

    before = torch.cat([g.flatten() for g in g_before])
    after = torch.cat([g.flatten() for g in g_after])
    row = frame.iloc[0]
    assert row["grad_norm"] == pytest.approx(float(before.norm()), rel=1e-5)
    assert row["grad_norm_after"] == pytest.approx(float(after.norm()), rel=1e-5)
    assert row["shift"] == pytest.approx(float((before - after).norm()), rel=1e-4)
    assert row["cosine"] == pytest.approx(float(before @ after / (before.norm() * after.norm())), rel=1e-6)
    assert row["upstream_update"] == pytest.approx(lr * float(torch.cat([g.flatten() for g in g_earlier]).norm()),
                                                   rel=1e-5)
    assert row["shift_rel"] > 0.05  # the step of the earlier blocks changed block3's gradient


def test_the_model_is_left_as_it_was():
    model, x, y = _conv_setup()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    model.block2.eval()  # a mixed mode must come back too
    internal_covariate_shift(model, nn.CrossEntropyLoss(), x, y, sgd_rule(0.1))
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and not model.block2.training and model.block3.training


def test_optimizer_rule_is_the_next_step_and_leaves_the_optimiser_as_it_was():
    model, x, y = _conv_setup()
    criterion = nn.CrossEntropyLoss()
    params = list(model.parameters())
    plain = torch.optim.SGD(params, lr=0.2)
    grads = list(torch.autograd.grad(criterion(model(x), y), params))
    for mine, reference in zip(optimizer_rule(plain)(params, grads), sgd_rule(0.2)(params, grads)):
        torch.testing.assert_close(mine, reference)

    heavy = torch.optim.SGD(params, lr=0.2, momentum=0.9, weight_decay=0.01)
    for p, g in zip(params, grads):
        p.grad = g.clone()
    heavy.step()  # a momentum buffer now exists: the next step is -lr (0.9 buf + g + wd w)
    buffers = [heavy.state[p]["momentum_buffer"].clone() for p in params]
    weights = [p.detach().clone() for p in params]
    marker = [p.grad.clone() for p in params]
    updates = optimizer_rule(heavy)(params, grads)
    for u, buf, g, w in zip(updates, buffers, grads, weights):
        torch.testing.assert_close(u, -0.2 * (0.9 * buf + g + 0.01 * w))
    assert all(torch.equal(p, w) for p, w in zip(params, weights))
    assert all(torch.equal(p.grad, m) for p, m in zip(params, marker))
    assert all(torch.equal(heavy.state[p]["momentum_buffer"], b) for p, b in zip(params, buffers))


def test_optimizer_rule_refuses_parameters_it_does_not_train():
    model, x, y = _conv_setup()
    rule = optimizer_rule(torch.optim.SGD(model.head.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="not in the optimiser"):
        internal_covariate_shift(model, nn.CrossEntropyLoss(), x, y, rule)


def test_layers_default_to_the_top_level_children_and_must_be_disjoint():
    model, x, y = _conv_setup()
    assert [name for name, _ in model_layers(model)] == ["block1", "block2", "block3", "head"]
    assert [name for name, _ in model_layers(model, ["block1.0", "block1.1"])] == ["block1.0", "block1.1"]
    with pytest.raises(ValueError, match="share parameters"):
        model_layers(model, ["block1", "block1.0"])
    with pytest.raises(ValueError, match="not submodules"):
        model_layers(model, ["block9"])
    with pytest.raises(ValueError, match="no trainable parameter"):
        model_layers(model, ["block1.2"])  # the ReLU
    with pytest.raises(ValueError, match="not among the layers"):
        internal_covariate_shift(model, nn.CrossEntropyLoss(), x, y, sgd_rule(0.1), measure=["block1.0"])
    with pytest.raises(ValueError, match="one update per parameter"):
        internal_covariate_shift(model, nn.CrossEntropyLoss(), x, y, lambda params, grads: grads[:1])


def test_the_probe_measures_during_training_with_the_trainers_step():
    torch.manual_seed(0)
    model = _ConvBN()
    x, y = torch.randn(32, 2, 5, 5), torch.randint(0, 3, (32,))
    probe = CovariateShiftProbe(every=2, measure=["block2", "head"])
    reference = CovariateShiftProbe(every=2, measure=["block2", "head"], rule=sgd_rule(0.1))
    config = TrainConfig(steps=4, batch_size=8, lr=0.1, momentum=0.0, device="cpu", progress=False, log_every=1)
    Trainer(model, config, (x, y), callbacks=[probe, reference]).fit()
    frame, expected = probe.to_frame(), reference.to_frame()
    assert list(frame.columns) == ["step", *ICS_COLUMNS]
    assert frame[["step", "layer"]].values.tolist() == [[0, "block2"], [0, "head"], [2, "block2"], [2, "head"]]
    pd.testing.assert_frame_equal(frame, expected)  # plain SGD: the optimiser's step is -lr G
    assert (frame["shift"] > 0).all() and frame["cosine"].between(-1, 1).all()
    assert not math.isnan(frame["shift_rel"].iloc[0])
    with pytest.raises(ValueError, match="every"):
        CovariateShiftProbe(every=0)
