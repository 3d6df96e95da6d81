"""train.precision = "tf32x3": the 2x2 conv and the attention product as three products of TF32-exact
split operands each. On the CPU the products are plain float32, so these tests check the arithmetic and
that the goldens' tolerances hold through it; tests/test_tf32_emulation.py emulates the TF32 units
and tests/test_cuda.py checks it on them."""
import numpy as np
import pytest
import torch

import test_golden_model
from conftest import rel_err
from lesa.split_tf32 import conv2d_3xtf32, linear_3xtf32, split_tf32
from test_golden_model import Golden, golden  # noqa: F401  (the parametrised golden fixture)


def test_split_is_exact_and_the_high_part_fits_tf32():
    g = torch.Generator().manual_seed(0)
    t = torch.cat([torch.randn(1000, generator=g) * 10.0 ** torch.randint(-30, 30, (1000,), generator=g),
                   torch.tensor([0.0, -0.0, 1.0, -3.5, 1e-40, float("inf")])])
    hi, lo = split_tf32(t)
    finite = torch.isfinite(t)
    assert torch.equal((hi + lo)[finite], t[finite])  # exact: hi shares t's leading bits
    assert not (hi.view(torch.int32) & 0x1FFF).any()  # 13 low mantissa bits clear: TF32-exact
    normal = finite & (hi.abs() >= torch.finfo(torch.float32).tiny)  # (subnormals: no relative bound)
    assert (lo.abs() <= hi.abs() * 2.0 ** -10)[normal].all()


def test_conv_and_its_gradients_equal_the_plain_conv():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 16, 6, 6, generator=g, requires_grad=True)
    w = torch.randn(8, 16, 2, 2, generator=g, requires_grad=True)
    b = torch.randn(8, generator=g, requires_grad=True)
    grad = torch.randn(3, 8, 5, 5, generator=g)
    plain = torch.nn.functional.conv2d(x, w, b)
    split = conv2d_3xtf32(x, w, b)
    assert rel_err(split.detach(), plain.detach()) <= 1e-6
    for a, c in zip(torch.autograd.grad(split, (x, w, b), grad), torch.autograd.grad(plain, (x, w, b), grad)):
        assert rel_err(a, c) <= 1e-6


def test_linear_and_its_gradients_equal_the_plain_product():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 7, 16, generator=g, requires_grad=True)
    w = torch.randn(16, 5, generator=g, requires_grad=True)
    b = torch.randn(5, generator=g, requires_grad=True)
    grad = torch.randn(3, 7, 5, generator=g)
    plain = x @ w + b
    split = linear_3xtf32(x, w, b)
    assert split.shape == plain.shape and rel_err(split.detach(), plain.detach()) <= 1e-6
    for a, c in zip(torch.autograd.grad(split, (x, w, b), grad), torch.autograd.grad(plain, (x, w, b), grad)):
        assert rel_err(a, c) <= 1e-6


def _split_conv_model(make):
    def model(self, **switches):
        m = make(self, **switches)
        m.tf32x3 = True
        return m
    return model


def test_golden_training_mode_with_the_split_conv(golden):  # noqa: F811
    model = golden.model().train()
    model.tf32x3 = True
    test_golden_model.check_training_mode(golden, model, *golden.batch(0))


def test_golden_four_steps_with_the_split_conv(golden, monkeypatch):  # noqa: F811
    monkeypatch.setattr(Golden, "model", _split_conv_model(Golden.model))
    test_golden_model.test_four_training_steps_reach_the_originals_weights(golden, foreach=False)


def test_train_precision_switches_the_model_and_the_units(tmp_path):
    from lesa.train import set_precision
    from lesa import LESA, LESAConfig

    rng = np.random.default_rng(0)
    model = LESA(rng.normal(size=(4, 300)), rng.normal(size=(2, 300)), LESAConfig(n_attention=2))
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        set_precision("tf32x3", model)
        assert model.tf32x3 and torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        set_precision("fp32", model)
        assert not model.tf32x3 and not torch.backends.cudnn.allow_tf32
        with pytest.raises(Exception, match="tf32x3"):
            set_precision("fp16", model)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_lesa_train_takes_the_setting(tmp_path):
    from lesa.synth import PRESETS, SynthSpec, config_for, write_synthetic
    from lesa.train import build_training

    files = write_synthetic(tmp_path / "data", SynthSpec(**PRESETS["tiny"]), progress=False)
    cfg = config_for(files, "nus_wide_zero_shot", tmp_path / "run", "tiny", n_iters=2, device="cpu",
                     precision="tf32x3")
    cfg.data.n_validation = 40
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    run = build_training(cfg, progress=False)
    try:
        assert run.model.tf32x3
    finally:
        run.close()
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    cfg.train.precision = "fp16"
    with pytest.raises(Exception, match="tf32x3"):
        build_training(cfg, progress=False)
