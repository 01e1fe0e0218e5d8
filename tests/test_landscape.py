"""Loss-surface probes: exact values on a quadratic, HVPs against finite differences, exact restoration."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis import TrainConfig, Trainer
from analysis.instruments.landscape import (
    filter_normalized_direction,
    hessian_top_eigenvalue,
    hessian_trace,
    hvp,
    loss_slice_1d,
    loss_slice_2d,
)
from analysis.instruments.line_search import LandscapeProbe, default_etas, line_search_probe

EIGENVALUES = [5.0, 2.0, 1.0, 0.5]


pytestmark = pytest.mark.usefixtures("one_thread")


def half_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((outputs - targets) ** 2).mean()


def quadratic(eigenvalues=EIGENVALUES, rotate: bool = True):
    """A Linear(n, 1) whose loss 0.5 mean((x.w - t)^2) has the Hessian A = Q diag(eigenvalues) Q^T exactly."""
    n = len(eigenvalues)
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0] if rotate else torch.eye(n).double()
    lam = torch.tensor(eigenvalues, dtype=torch.float64)
    a = q @ torch.diag(lam) @ q.T
    x = math.sqrt(n) * (q @ torch.diag(lam.sqrt())).T  # rows x_i with X^T X / n = A
    t = torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(n, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, n, generator=g, dtype=torch.float64))
    return model, a, x, t


class ConvNet(nn.Module):
    """Conv, BN, ReLU, dropout and a linear head: everything a probe must put back."""

    def __init__(self, dtype=torch.float32, drop: float = 0.3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(drop)
        self.fc = nn.Linear(6 * 4 * 4, 4)
        self.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.adaptive_avg_pool2d(torch.tanh(self.bn(self.conv(x))), 4)
        return self.fc(self.drop(torch.flatten(h, 1)))


def conv_batch(dtype=torch.float32, n: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g).to(dtype), torch.randint(0, 4, (n,), generator=g)


def everything(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "training": [m.training for m in model.modules()],
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "rng": torch.get_rng_state(),
    }


def assert_identical(before: dict, after: dict) -> None:
    for a, b in zip(before["params"], after["params"]):
        assert torch.equal(a, b)
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None and b is None) or torch.equal(a, b)
    for a, b in zip(before["buffers"], after["buffers"]):
        assert torch.equal(a, b)
    assert before["training"] == after["training"]
    assert torch.equal(before["rng"], after["rng"])
    sa, sb = before["optimizer"], after["optimizer"]
    assert sa["param_groups"] == sb["param_groups"] and sa["state"].keys() == sb["state"].keys()
    for key in sa["state"]:
        for name, value in sa["state"][key].items():
            other = sb["state"][key][name]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other


# --------------------------------------------------------------------------------- the quadratic case
@pytest.mark.parametrize("given", [False, True], ids=["computed", "from_grad"])
def test_line_search_on_a_quadratic_is_analytic(given):
    model, a, x, t = quadratic()
    w = model.weight.detach().flatten()
    g = a @ w - x.T @ t.flatten() / len(w)
    loss = float(half_mse(model(x), t).detach())
    lr = 0.1
    if given:
        model.zero_grad()
        half_mse(model(x), t).backward()
        result = line_search_probe(model, half_mse, x, t, lr, grad=True, loss=loss)
    else:
        result = line_search_probe(model, half_mse, x, t, lr)
    etas = default_etas(lr)
    assert result["etas"] == pytest.approx(etas) and etas[0] == pytest.approx(0.05) and etas[-1] == pytest.approx(0.4)
    gg, gag, ag = float(g @ g), float(g @ a @ g), float((a @ g).norm())
    # L(w - eta g) = L - eta g.g + eta^2/2 g^T A g;  grad L(w - eta g) = g - eta A g
    assert result["losses"] == pytest.approx([loss - e * gg + 0.5 * e * e * gag for e in etas], rel=1e-12)
    assert result["grad_preds"] == pytest.approx([e * ag for e in etas], rel=1e-12)
    assert result["beta_eff"] == pytest.approx(ag / math.sqrt(gg), rel=1e-12)
    assert result["loss"] == pytest.approx(loss, rel=1e-15) and result["grad_norm"] == pytest.approx(math.sqrt(gg))
    assert result["loss_min"] == min(result["losses"]) and result["loss_max"] == max(result["losses"])
    assert result["grad_pred_max"] == pytest.approx(0.4 * ag) and result["grad_pred_min"] == pytest.approx(0.05 * ag)
    assert result["grad_pred_rel_max"] == pytest.approx(0.4 * ag / math.sqrt(gg))
    assert result["bn_mode"] == "train" and result["num_points"] == 8


def test_beta_eff_along_an_eigenvector_is_its_eigenvalue():
    model, a, x, t = quadratic()
    eigvals, eigvecs = torch.linalg.eigh(a)
    # choose w so that g = A w - b is the top eigenvector: w = A^{-1} (b + v)
    b = x.T @ t.flatten() / a.shape[0]
    with torch.no_grad():
        model.weight.copy_(torch.linalg.solve(a, b + eigvecs[:, -1]).view(1, -1))
    result = line_search_probe(model, half_mse, x, t, lr=0.1, etas=[0.01, 0.2])
    assert result["beta_eff"] == pytest.approx(5.0, rel=1e-10)


def test_top_eigenvalue_and_trace_of_a_quadratic():
    model, a, x, t = quadratic()
    for method in ("autograd", "func"):
        top = hessian_top_eigenvalue(model, half_mse, x, t, iters=200, tol=1e-12, method=method)
        assert top["eigenvalue"] == pytest.approx(5.0, rel=1e-9) and top["converged"]
        assert top["bn_mode"] == "train" and top["method"] == method
    estimate = hessian_trace(model, half_mse, x, t, samples=400, seed=1)
    true = sum(EIGENVALUES)
    # Rademacher variance of v^T A v is 2 * sum_{i != j} A_ij^2
    se = math.sqrt(2 * float((a**2).sum() - (a.diagonal()**2).sum()) / 400)
    assert estimate["trace_se"] == pytest.approx(se, rel=0.25)
    assert abs(estimate["trace"] - true) < 4 * se
    # with a diagonal Hessian every Rademacher sample is exact
    diagonal, _, xd, td = quadratic(rotate=False)
    assert hessian_trace(diagonal, half_mse, xd, td, samples=3)["trace"] == pytest.approx(true, rel=1e-12)


# ------------------------------------------------------------------------------------------ Hessian
@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_hvp_matches_finite_differences_of_the_gradient(bn_mode):
    torch.manual_seed(0)
    model = ConvNet(torch.float64, drop=0.0)
    model.bn.running_mean.uniform_(-0.5, 0.5)
    x, y = conv_batch(torch.float64)
    params = list(model.parameters())
    g = torch.Generator().manual_seed(3)
    v = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
    products = hvp(model, F.cross_entropy, x, y, v, bn_mode=bn_mode)
    via_func = hvp(model, F.cross_entropy, x, y, v, bn_mode=bn_mode, method="func")

    def grad_at(shift: float) -> list[torch.Tensor]:
        shifted = copy.deepcopy(model).train(bn_mode == "train")
        with torch.no_grad():
            for p, d in zip(shifted.parameters(), v):
                p.add_(d, alpha=shift)
        return list(torch.autograd.grad(F.cross_entropy(shifted(x), y), list(shifted.parameters())))

    h = 1e-5
    plus, minus = grad_at(h), grad_at(-h)
    for hv, hf, gp, gm in zip(products, via_func, plus, minus):
        assert torch.allclose(hv, (gp - gm) / (2 * h), atol=1e-7, rtol=1e-5)
        assert torch.allclose(hv, hf, atol=1e-12, rtol=1e-10)


# ------------------------------------------------------------------------------------------ restoring
def test_every_probe_restores_params_buffers_grads_optimizer_and_rng():
    torch.manual_seed(0)
    model = ConvNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = conv_batch()
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    model.eval()
    model.fc.train()  # mixed flags come back as they were
    before = everything(model, optimizer)

    line_search_probe(model, F.cross_entropy, x, y, lr=0.1, bn_mode="train")
    line_search_probe(model, F.cross_entropy, x, y, lr=0.1, bn_mode="eval", grad=True, loss=loss)
    hvp(model, F.cross_entropy, x, y, [torch.ones_like(p) for p in model.parameters()])
    hessian_top_eigenvalue(model, F.cross_entropy, x, y, iters=5)
    hessian_top_eigenvalue(model, F.cross_entropy, x, y, iters=3, method="func")
    hessian_trace(model, F.cross_entropy, x, y, samples=3)
    loss_slice_1d(model, F.cross_entropy, (x, y), steps=5)
    loss_slice_2d(model, F.cross_entropy, [(x[:4], y[:4]), (x[4:], y[4:])], steps=3, bn_mode="eval")
    assert_identical(before, everything(model, optimizer))


def test_probe_costs_exactly_k_forward_passes():
    torch.manual_seed(0)
    model = ConvNet()
    x, y = conv_batch()
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    calls.clear()
    line_search_probe(model, F.cross_entropy, x, y, lr=0.1, num_points=5, grad=True, loss=loss)
    assert len(calls) == 5
    calls.clear()
    line_search_probe(model, F.cross_entropy, x, y, lr=0.1, num_points=5)
    assert len(calls) == 6  # plus the pass for g
    handle.remove()


def test_dropout_masks_are_shared_by_the_probe_evaluations():
    """Every evaluation replays the same RNG state: as eta -> 0 the gradient change vanishes despite dropout."""
    torch.manual_seed(0)
    model = ConvNet(torch.float64, drop=0.5)
    x, y = conv_batch(torch.float64)
    result = line_search_probe(model, F.cross_entropy, x, y, lr=1.0, etas=[1e-7])
    assert result["grad_pred_max"] < 1e-4 * result["grad_norm"]
    assert result["losses"][0] == pytest.approx(result["loss"], rel=1e-5)


def test_bad_arguments_are_clear_errors():
    model, _, x, t = quadratic()
    with pytest.raises(ValueError, match="bn_mode"):
        line_search_probe(model, half_mse, x, t, lr=0.1, bn_mode="training")
    with pytest.raises(ValueError, match="loss="):
        line_search_probe(model, half_mse, x, t, lr=0.1, grad=True)
    with pytest.raises(ValueError, match="positive"):
        line_search_probe(model, half_mse, x, t, lr=0.1, etas=[0.1, -1.0])
    with pytest.raises(ValueError, match="scalar"):
        line_search_probe(model, lambda o, tt: (o - tt) ** 2, x, t, lr=0.1)
    with pytest.raises(ValueError, match="one tensor per trainable parameter"):
        hvp(model, half_mse, x, t, [torch.ones(3)])


# ------------------------------------------------------------------------------------------- slices
def test_slice_at_zero_is_the_current_loss_and_2d_contains_1d():
    torch.manual_seed(0)
    model = ConvNet()
    x, y = conv_batch()
    model.eval()
    with torch.no_grad():
        current = float(F.cross_entropy(model(x), y))
    line = loss_slice_1d(model, F.cross_entropy, (x, y), steps=7, span=0.5, seed=4, bn_mode="eval")
    assert list(line.columns) == ["alpha", "loss", "bn_mode", "seed", "samples"]
    assert line["alpha"].tolist() == pytest.approx([-0.5, -1 / 3, -1 / 6, 0.0, 1 / 6, 1 / 3, 0.5])
    assert line.loc[line["alpha"] == 0.0, "loss"].item() == current
    assert (line["bn_mode"] == "eval").all() and (line["samples"] == 8).all()
    assert line["loss"].nunique() == 7
    grid = loss_slice_2d(model, F.cross_entropy, (x, y), steps=7, span=0.5, seed=4, bn_mode="eval")
    assert len(grid) == 49 and list(grid.columns) == ["alpha", "beta", "loss", "bn_mode", "seed", "samples"]
    on_axis = grid[grid["beta"] == 0.0].sort_values("alpha")
    assert on_axis["loss"].tolist() == pytest.approx(line["loss"].tolist(), rel=1e-6)


def test_filter_normalized_direction_follows_li_et_al():
    torch.manual_seed(0)
    model = ConvNet()
    direction = filter_normalized_direction(model, seed=0)
    for (name, p), d in zip(model.named_parameters(), direction):
        if p.dim() <= 1:
            assert torch.count_nonzero(d) == 0, name  # biases and BN parameters are not moved ('biasbn')
        else:
            assert torch.allclose(d.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1), rtol=1e-5), name
    again = filter_normalized_direction(model, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(direction, again))
    copies = filter_normalized_direction(model, seed=0, ignore_biasbn=False)
    assert torch.equal(copies[1], model.conv.bias.detach())


# ----------------------------------------------------------------------------------------- callback
class FakeTrainer:
    def __init__(self, model: nn.Module, lr: float) -> None:
        self.model, self.criterion, self.step = model, nn.CrossEntropyLoss(), 0
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        self.metrics: list[tuple[int, dict]] = []

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def log_metrics(self, values: dict) -> None:
        self.metrics.append((self.step, dict(values)))


def test_landscape_probe_callback_logs_and_keeps_rows():
    torch.manual_seed(0)
    model = ConvNet(drop=0.0)
    trainer = FakeTrainer(model, lr=0.05)
    probe = LandscapeProbe(every=2, num_points=4, eigen_every=4, eigen_iters=5)
    probe.on_train_start(trainer)
    model.train()
    for step in range(5):
        x, y = conv_batch(seed=step)
        trainer.optimizer.zero_grad()
        loss = trainer.criterion(model(x), y)
        loss.backward()
        before = everything(model, trainer.optimizer)
        probe.on_after_backward(trainer, (x, y), loss.detach())
        assert_identical(before, everything(model, trainer.optimizer))
        trainer.optimizer.step()
        trainer.step += 1
    assert [s for s, _ in trainer.metrics] == [0, 2, 4]
    assert set(trainer.metrics[0][1]) == {"loss_min", "loss_max", "grad_pred_min", "grad_pred_max", "beta_eff",
                                          "hessian_top"}
    assert "hessian_top" not in trainer.metrics[1][1]
    frame = probe.to_frame()
    assert frame["step"].tolist() == [0, 2, 4] and (frame["bn_mode"] == "train").all()
    assert (frame["grad_source"] == "trainer").all() and (frame["beta_eff"] > 0).all()
    assert (frame["loss_min"] <= frame["loss_max"]).all()
    long = probe.to_frame(long=True)
    assert len(long) == 12 and list(long.columns) == ["step", "eta", "loss", "grad_pred", "bn_mode"]


def test_landscape_probe_does_not_change_a_real_training_run():

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.drop, self.fc = nn.Dropout(0.2), nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1)
            return self.fc(self.drop(h))

    g = torch.Generator().manual_seed(0)
    data = (torch.randn(48, 3, 8, 8, generator=g), torch.randint(0, 4, (48,), generator=g))
    config = dict(steps=8, batch_size=8, lr=0.1, momentum=0.9, device="cpu", seed=0, log_every=1, progress=False)

    def run(callbacks):
        torch.manual_seed(0)
        model = Net()
        history = Trainer(model, TrainConfig(**config), data, callbacks=callbacks).fit()
        return history[history["split"] == "train"], model

    plain, plain_model = run([])
    probe = LandscapeProbe(every=3, num_points=3)
    probed, probed_model = run([probe])
    assert plain["loss"].tolist() == probed["loss"].tolist()  # bit-identical training
    for a, b in zip(plain_model.state_dict().values(), probed_model.state_dict().values()):
        assert torch.equal(a, b)
    assert probed["beta_eff"].notna().tolist() == [True, False, False, True, False, False, True, False]
    assert probe.to_frame()["step"].tolist() == [0, 3, 6]
