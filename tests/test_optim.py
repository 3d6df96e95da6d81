"""TF1 RMSProp and the original adaptive learning rate."""
import numpy as np
import pytest
import torch

from lesa import AdaptiveLR, TFRMSprop


@pytest.mark.parametrize("patience", [5, 2])
def test_adaptive_lr_equals_original(golden_root, patience):
    g = np.load(golden_root("metrics") / "metrics.npz")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.001)
    schedule = AdaptiveLR(opt, signal_strength=0.3, patience=patience)
    got = [schedule.step(m) for m in g[f"lr_patient{patience}/metric"]]
    np.testing.assert_allclose(got, g[f"lr_patient{patience}/lr"], rtol=0, atol=1e-9)
    assert opt.param_groups[0]["lr"] == got[-1]


def _tf_rmsprop_reference(w, grads, lrs, rho=0.9, momentum=0.9, eps=1.0):
    """TF1 ApplyRMSProp written out in float64."""
    ms, mom = np.ones_like(w), np.zeros_like(w)
    for g, lr in zip(grads, lrs):
        ms = ms + (g * g - ms) * (1 - rho)
        mom = momentum * mom + lr * g / np.sqrt(ms + eps)
        w = w - mom
    return w


def test_tf_rmsprop_matches_tf_update_rule_with_rate_changes():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(7, 3))
    grads = [rng.normal(size=(7, 3)) for _ in range(6)]
    lrs = [1e-3, 1e-3, 8e-4, 8e-4, 5e-2, 1e-3]
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = TFRMSprop([p], lr=lrs[0])
    for g, lr in zip(grads, lrs):
        opt.set_lr(lr)
        p.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(p.detach().numpy(), _tf_rmsprop_reference(w0, grads, lrs), rtol=1e-12)


def test_tf_rmsprop_differs_from_torch_rmsprop():
    # the mean-square slot starts at 1 and eps sits inside the root: first step is lr*g/sqrt(1.1*... )
    p = torch.nn.Parameter(torch.ones(1))
    opt = TFRMSprop([p], lr=0.1)
    p.grad = torch.full((1,), 2.0)
    opt.step()
    ms = 1 + (4 - 1) * 0.1
    assert p.item() == pytest.approx(1 - 0.1 * 2 / np.sqrt(ms + 1.0))


def test_adaptive_lr_state_round_trip():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.001)
    a = AdaptiveLR(opt, patience=2)
    for m in [0.5, 0.4, 0.3, 0.6]:
        a.step(m)
    b = AdaptiveLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.001), patience=2)
    b.load_state_dict(a.state_dict())
    b.optimizer.param_groups[0]["lr"] = a.lr  # (an optimizer of torch's: the rate lives in its groups)
    for m in [0.2, 0.1, 0.05]:
        assert a.step(m) == b.step(m)
