"""The one training step (lesa.step): what a plain loop does, refusals, the CPU's finiteness check.
The golden four-step check through every mode this machine runs is in tests/test_golden_model.py."""
import numpy as np
import pytest
import torch

from lesa import LESA, LESAConfig, ShapeError, TFRMSprop
from lesa.errors import ConfigError
from lesa.losses import ranking_loss
from lesa.step import LOSS_KEYS, NonFiniteLoss, TrainStep, max_positives_of


def _model(seed=1, C=12):
    rng = np.random.default_rng(0)
    torch.manual_seed(seed)
    return LESA(rng.normal(size=(C, 300)), rng.normal(size=(5, 300)), LESAConfig(n_attention=3)).train()


def _batches(C=12):
    g = torch.Generator().manual_seed(0)
    return [(torch.relu(torch.randn(6, 196, 512, generator=g)), torch.randint(-1, 2, (6, C), generator=g).float())
            for _ in range(3)]


def test_the_step_is_the_plain_loop():
    plain = _model()
    opt = TFRMSprop(plain.parameters(), lr=1e-3)
    for features, labels in _batches():
        opt.zero_grad()
        plain.loss(plain(features), labels)["total"].backward()
        opt.step()
    stepped = _model()
    step = TrainStep(stepped, TFRMSprop(stepped.parameters(), lr=1e-3))
    for features, labels in _batches():
        losses = step(features, labels)
    assert set(losses) == set(LOSS_KEYS)
    for key, value in plain.state_dict().items():  # the same operations: bit for bit
        assert torch.equal(value, stepped.state_dict()[key]), key


def test_a_static_ranking_padding_changes_nothing_but_the_summation_order():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 20, generator=g, dtype=torch.float64)
    labels = torch.randint(-1, 2, (7, 20), generator=g).double()
    labels[2] = 1.0  # an image with every label positive
    reference = ranking_loss(logits, labels)
    for p in (20, 25, 1000):
        torch.testing.assert_close(ranking_loss(logits, labels, max_positives=p), reference, rtol=0, atol=0)
    with pytest.raises(ShapeError, match="max_positives"):
        ranking_loss(logits, labels, max_positives=5)
    assert max_positives_of(labels) == 20 and max_positives_of(labels.numpy()) == 20


def test_a_non_finite_loss_stops_before_the_update():
    model = _model()
    step = TrainStep(model, TFRMSprop(model.parameters(), lr=1e-3))
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    features, labels = _batches()[0]
    features[0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLoss, match="non-finite loss"):
        step(features, labels)
    for key, value in before.items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_modes_a_cpu_cannot_run_are_refused():
    model = _model()
    opt = TFRMSprop(model.parameters())
    with pytest.raises(ConfigError, match="needs the model on a GPU"):
        TrainStep(model, opt, mode="cuda_graph", max_positives=4)
    with pytest.raises(ConfigError, match="fixed max_positives"):
        TrainStep(model, opt, mode="compile")
    with pytest.raises(ConfigError, match="choose one of"):
        TrainStep(model, opt, mode="warp")
