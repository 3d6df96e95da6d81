"""The model's own behaviour on synthetic inputs (always runs; no ../shared needed)."""
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from lesa import LESA, LESAConfig, CheckpointError, ConfigError, ShapeError, TFRMSprop
from lesa.losses import ranking_loss, ranking_loss_dense
from lesa.tf_weights import infer_config, load_tf_weights

rng = np.random.default_rng(0)
SEEN = rng.normal(size=(6, 300)).astype(np.float32)
UNSEEN = rng.normal(size=(4, 300)).astype(np.float32)


def batch(B=3, C=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.relu(torch.randn(B, 196, 512, generator=g))
    labels = torch.randint(-1, 2, (B, C), generator=g).float()
    return features, labels


SWITCHES = ["trainable_vecs", "separate_w1", "batchnorm", "conv", "l2_regularizer"]


@pytest.mark.parametrize("values", list(itertools.product([False, True], repeat=len(SWITCHES))))
def test_every_switch_combination_runs_forward_loss_backward(values):
    cfg = LESAConfig(n_attention=3, lamb_w2v_diff=0.01, global_pool="max" if values[0] else "mean",
                     **dict(zip(SWITCHES, values)))
    model = LESA(SEEN, UNSEEN, cfg).train()
    features, labels = batch()
    out = model(features)
    assert out.logits.shape == (3, 6) and out.zs_logits.shape == (3, 4) and out.gzs_logits.shape == (3, 10)
    assert out.alphas.shape == (3, 3, 196)
    torch.testing.assert_close(out.alphas.sum(-1), torch.ones(3, 3))
    losses = model.loss(out, labels)
    assert set(losses) == {"total", "rank", "att_dist", "att_span", "att_global", "w2v_diff", "l2"}
    losses["total"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    expected_total = (losses["rank"] + 0.1 * losses["att_dist"] + 0.001 * losses["att_global"]
                      + 0.01 * losses["att_span"] + 0.01 * losses["w2v_diff"])
    if cfg.l2_regularizer and cfg.conv:
        expected_total = expected_total + losses["l2"]
    torch.testing.assert_close(losses["total"], expected_total)


def test_generalised_scores_are_unseen_then_seen():
    model = LESA(SEEN, UNSEEN).eval()
    out = model(batch()[0])
    torch.testing.assert_close(out.gzs_logits, torch.cat([out.zs_logits, out.logits], 1))


def test_scores_in_slices_on_the_cpu_equal_the_whole_batch():
    from lesa.model import CPU_INFERENCE_SLICE

    model = LESA(SEEN, UNSEEN, LESAConfig(n_attention=3))
    with torch.no_grad():
        model.bn.running_mean.uniform_(0, 1)  # moving statistics that differ from any batch's
        features = batch(B=2 * CPU_INFERENCE_SLICE + 5)[0]
        model.eval()
        whole, sliced = model(features), model.scores(features)
        for head in ("logits", "zs_logits", "gzs_logits"):
            torch.testing.assert_close(sliced[head], getattr(whole, head), rtol=1e-6, atol=1e-6)
        model.train()  # batch statistics: the batch is never sliced
        torch.testing.assert_close(model.scores(features, ("logits",))["logits"], model(features).logits,
                                   rtol=0, atol=0)


@pytest.mark.parametrize("conv", [True, False])
def test_float16_features_score_as_their_float32_values(conv):
    """Features stored as float16 need no cast by the caller: the model computes in float32, or
    casts them straight to bfloat16 under bf16 autocast - bit for bit what float32 input gives."""
    from lesa.evaluate import predict

    model = LESA(SEEN, UNSEEN, LESAConfig(n_attention=3, conv=conv)).eval()
    half = batch(B=6)[0].half()
    for precision in ("fp32", "bf16"):
        want, _ = predict(model, half.float(), precision=precision)
        got, _ = predict(model, half, precision=precision)
        for head in want:
            assert np.array_equal(got[head], want[head]), (precision, head)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.regions(half).dtype == torch.bfloat16
    assert model.regions(half).dtype == torch.float32


def test_vectors_are_normalised_inside():
    model = LESA(SEEN * 7.0, UNSEEN * 0.1)
    torch.testing.assert_close(model.init_vecs.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(model.unseen_vecs.norm(dim=1), torch.ones(4))


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 6), st.integers(1, 30), st.integers(0, 10_000))
def test_sparse_ranking_loss_equals_dense(B, C, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, C, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(-1, 2, (B, C), generator=g).double()
    if seed % 3 == 0:
        labels[0] = 1.0  # an image with every label positive
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    sparse, dense = ranking_loss(a, labels), ranking_loss_dense(b, labels)
    torch.testing.assert_close(sparse, dense, rtol=1e-12, atol=1e-12)
    sparse.backward()
    dense.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


def test_ranking_loss_value_by_hand():
    logits = torch.tensor([[2.0, 0.5, 1.8]])
    labels = torch.tensor([[1.0, -1.0, -1.0]])
    # pairs: (0,1): 1+0.5-2 = -0.5 -> 0; (0,2): 1+1.8-2 = 0.8 -> violated once
    assert ranking_loss(logits, labels).item() == pytest.approx(0.8)


def test_labels_that_are_ignored_do_not_change_the_loss():
    """A label marked 0 (not annotated) takes no part in any loss term: the terms equal those of the
    same batch without that label's column, whatever its score."""
    from lesa.losses import attention_distribution_loss, attention_global_loss, ranking_loss

    g = torch.Generator().manual_seed(4)
    logits, global_logits = torch.randn(5, 9, generator=g, dtype=torch.float64), torch.randn(5, 9, generator=g, dtype=torch.float64)
    att_logits = torch.randn(5, 3, 9, generator=g, dtype=torch.float64)
    labels = torch.randint(-1, 2, (5, 9), generator=g).double()
    labels[:, [2, 6]] = 0  # two columns nobody annotated
    labels[1, 0] = labels[3, 4] = 0  # and two single entries
    keep = [c for c in range(9) if c not in (2, 6)]
    terms = lambda lo, gl, al, la: (ranking_loss(lo, la), attention_global_loss(lo, gl, la),  # noqa: E731
                                    attention_distribution_loss(al, la))
    whole = terms(logits, global_logits, att_logits, labels)
    without = terms(logits[:, keep], global_logits[:, keep], att_logits[:, :, keep], labels[:, keep])
    for a, b in zip(whole, without):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    moved = logits.clone()
    moved[labels == 0] += 100 * torch.randn(int((labels == 0).sum()), generator=g, dtype=torch.float64)
    for a, b in zip(whole, terms(moved, global_logits, att_logits, labels)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    flipped = labels.clone()
    flipped[1, 0] = 1  # an annotation does change the loss
    assert ranking_loss(logits, flipped) != whole[0]


def test_a_few_steps_reduce_the_ranking_loss():
    torch.manual_seed(0)
    model = LESA(SEEN, UNSEEN, LESAConfig(n_attention=2)).train()
    features, labels = batch(B=8)
    opt = TFRMSprop(model.parameters(), lr=1e-3)
    first = None
    for _ in range(15):
        opt.zero_grad()
        loss = model.loss(model(features), labels)
        loss["total"].backward()
        opt.step()
        first = first if first is not None else loss["rank"].item()
    assert loss["rank"].item() < first


def test_bad_shapes_and_settings_are_clear_errors():
    model = LESA(SEEN, UNSEEN)
    with pytest.raises(ShapeError, match="196, 512"):
        model(torch.zeros(2, 49, 512))
    with pytest.raises(ShapeError, match="label columns"):
        model.loss(model(batch()[0]), torch.zeros(3, 5))
    with pytest.raises(ShapeError, match="dimension"):
        LESA(SEEN, UNSEEN[:, :50])
    with pytest.raises(ConfigError, match="global_pool"):
        LESAConfig(global_pool="sum")
    with pytest.raises(ConfigError, match="unknown model setting"):
        LESAConfig.from_dict({"n_heads": 3})


def test_set_unseen_vecs_changes_zero_shot_labels():
    model = LESA(SEEN, UNSEEN).eval()
    model.set_unseen_vecs(rng.normal(size=(9, 300)))
    assert model(batch()[0]).zs_logits.shape == (3, 9)


def test_tf_weight_errors_list_every_problem():
    model = LESA(SEEN, UNSEEN)
    tensors = {"attention_layer/w_att_1": np.zeros((513, 512), np.float32),
               "attention_layer/w_att_2": np.zeros((513, 7), np.float32)}
    with pytest.raises(CheckpointError) as info:
        load_tf_weights(model, tensors)
    message = str(info.value)
    assert "missing: prediction_frac/W" in message and "missing: conv/conv/weights" in message
    assert "attention_layer/w_att_2: checkpoint (513, 7)" in message


def test_infer_config_from_shapes():
    cfg = infer_config({"attention_layer/w_att_1": (3, 513, 512), "attention_layer/w_att_2": (513, 3),
                        "prediction_frac/W": (512, 300), "conv/conv/weights": (2, 2, 512, 512),
                        "conv/conv/biases": (512,), "vecs": (9, 300)})
    assert (cfg.n_attention, cfg.separate_w1, cfg.batchnorm, cfg.conv, cfg.trainable_vecs) == (3, True, False, True, True)
    with pytest.raises(CheckpointError, match="not a LESA checkpoint"):
        infer_config({"vgg_19/conv1/conv1_1/weights": (3, 3, 3, 64)})
