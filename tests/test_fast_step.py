"""The fast training step computes what the plain step computes: the golden four-step check of
tests/test_golden_model.py runs through ``make_train_step`` in every mode this machine can run."""
import warnings

import numpy as np
import pytest
import torch

import test_golden_model
from test_golden_model import Golden, golden  # noqa: F401  (the parametrised golden fixture)
from lesa import LESA, LESAConfig, ShapeError, TFRMSprop
from lesa.fast_step import _compiler_usable, make_train_step, max_positives_of, predict
from lesa.losses import ranking_loss

CPU_MODES = ["eager"] + (["compile"] if _compiler_usable() else [])


def golden_max_positives(golden: Golden) -> int:
    return max(max_positives_of(golden.inputs[f"labels{i}"]) for i in range(4))


def run_four_fast_steps(golden: Golden, mode: str, **optimizer_options):
    """test_golden_model.run_four_steps, with the step done by make_train_step."""
    model = golden.model().train()
    optimizer = TFRMSprop(model.parameters(), lr=float(golden.expected["lr_per_step"][0]), **optimizer_options)
    step = make_train_step(model, optimizer, max_positives=golden_max_positives(golden), mode=mode)
    losses_per_step = []
    for i in range(4):
        optimizer.param_groups[0]["lr"] = float(golden.expected["lr_per_step"][i])
        features, labels = golden.batch(i)
        losses_per_step.append({k: v.item() for k, v in step(features, labels).items()})
    assert step.mode == mode
    return model, losses_per_step


@pytest.mark.parametrize("mode", [pytest.param(m, marks=pytest.mark.slow) if m == "compile" else m
                                  for m in CPU_MODES])
def test_golden_four_steps_through_the_fast_step(golden, mode, monkeypatch):  # noqa: F811
    if mode == "compile" and golden.cfg["T"] != 10:
        pytest.skip("compiling is slow on 2 cores: the paper's setting is enough")
    monkeypatch.setattr(test_golden_model, "run_four_steps",
                        lambda g, **options: run_four_fast_steps(g, mode, **options))
    test_golden_model.test_four_training_steps_reach_the_originals_weights(golden, foreach=False)


@pytest.mark.parametrize("max_positives", [None, 12])
def test_eager_fast_step_is_the_plain_step(max_positives):
    rng = np.random.default_rng(0)
    seen, unseen = rng.normal(size=(12, 300)), rng.normal(size=(5, 300))
    g = torch.Generator().manual_seed(0)
    batches = [(torch.relu(torch.randn(6, 196, 512, generator=g)), torch.randint(-1, 2, (6, 12), generator=g).float())
               for _ in range(3)]
    models = []
    for fast in (False, True):
        torch.manual_seed(1)
        model = LESA(seen, unseen, LESAConfig(n_attention=3)).train()
        opt = TFRMSprop(model.parameters(), lr=1e-3)
        step = make_train_step(model, opt, max_positives=max_positives, mode="eager")
        for features, labels in batches:
            if fast:
                step(features, labels)
            else:
                opt.zero_grad()
                model.loss(model(features), labels)["total"].backward()
                opt.step()
        models.append(model.state_dict())
    for key in models[0]:
        if max_positives is None:  # the same operations: bit for bit
            assert torch.equal(models[0][key], models[1][key]), key
        else:  # a wider padding of the ranking loss sums in another order
            torch.testing.assert_close(models[0][key], models[1][key], rtol=1e-5, atol=1e-7)


def test_static_max_positives_gives_the_same_ranking_loss():
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


def test_gpu_modes_fall_back_on_the_cpu():
    rng = np.random.default_rng(0)
    model = LESA(rng.normal(size=(4, 300)), rng.normal(size=(2, 300)), LESAConfig(n_attention=2))
    opt = TFRMSprop(model.parameters())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step = make_train_step(model, opt, max_positives=4, mode="cuda_graph")
    assert step.mode == "eager" and any("CUDA" in str(w.message) for w in caught)
    assert make_train_step(model, opt, mode="auto").mode == "eager"
    losses = step(torch.rand(3, 196, 512), torch.tensor([[1.0, -1, -1, 0]] * 3))
    assert set(losses) == {"total", "rank", "att_dist", "att_span", "att_global", "w2v_diff", "l2"}


def test_predict_equals_the_model_in_inference_mode():
    rng = np.random.default_rng(0)
    model = LESA(rng.normal(size=(4, 300)), rng.normal(size=(3, 300)), LESAConfig(n_attention=2))
    features = torch.rand(10, 196, 512)
    scores = predict(model, features, batch_size=4)
    with torch.no_grad():
        out = model.eval()(features)
    torch.testing.assert_close(scores["zs_logits"], out.zs_logits)
    torch.testing.assert_close(scores["gzs_logits"], out.gzs_logits)
