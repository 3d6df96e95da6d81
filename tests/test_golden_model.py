"""The model against outputs recorded by running the original TF1 code (../shared/golden).

model_nus: the paper's setting. model_variant: every other switch (T=3, separate W1, trainable
vectors, no batch-norm, l2 regulariser, max pooling). Tolerances are the issue's.
"""
import json

import numpy as np
import pytest
import torch

from conftest import rel_err
from lesa import LESA, LESAConfig, TFRMSprop, load_tf_checkpoint, read_tf_checkpoint
from lesa.step import TrainStep, max_positives_of
from lesa.tf_weights import is_model_variable, tf_variables

LOSS_NAMES = {"total": "loss", "rank": "loss_rank", "att_dist": "loss_att_dist",
              "att_span": "loss_att_span", "att_global": "loss_att_global",
              "w2v_diff": "loss_w2v_diff", "l2": "loss_regularizer"}
OUTPUTS = ["logits", "zs_logits", "gzs_logits", "alphas"]


def config_from_golden(cfg: dict) -> LESAConfig:
    return LESAConfig(
        n_attention=cfg["T"], lamb_att_dist=cfg["lamb_att_dist"], lamb_att_global=cfg["lamb_att_global"],
        lamb_att_span=cfg["lamb_att_span"], lamb_w2v_diff=cfg["lamb_w2v_diff"],
        trainable_vecs=cfg["trainable_vecs"], separate_w1=cfg["is_separate_W_1"],
        batchnorm=cfg["is_batchnorm"], conv=cfg["is_conv"], l2_regularizer=cfg["is_regularizer"],
        global_pool=cfg["global_pool"],
    )


class Golden:
    def __init__(self, root):
        self.root = root
        self.cfg = json.loads((root / "config.json").read_text())
        self.inputs = np.load(root / "inputs.npz")
        self.expected = np.load(root / "expected.npz")

    def model(self, **switches) -> LESA:
        model = LESA(self.inputs["seen_vecs"], self.inputs["unseen_vecs"], config_from_golden(self.cfg))
        load_tf_checkpoint(model, self.root / "init" / "model.ckpt")
        return model

    def batch(self, i):
        return torch.tensor(self.inputs[f"features{i}"]), torch.tensor(self.inputs[f"labels{i}"])


@pytest.fixture(scope="module", params=["model_nus", "model_variant"])
def golden(request, golden_root):
    return Golden(golden_root(request.param))


def test_config_matches_description(golden):
    assert golden.model().config.n_attention == golden.cfg["T"]


def test_inference_outputs(golden):
    model = golden.model().eval()
    with torch.no_grad():
        out = model(torch.tensor(golden.inputs["eval_features"]))
    for name in OUTPUTS:
        assert rel_err(getattr(out, name), golden.expected[f"init_eval/{name}"]) <= 1e-5, name


def test_training_mode_outputs_losses_and_gradients(golden):
    check_training_mode(golden, golden.model().train(), *golden.batch(0))


def check_training_mode(golden, model, features, labels):
    """Outputs, losses and gradients of the first training batch against the original's (on the
    device of ``model``, ``features`` and ``labels``)."""
    out = model(features)
    for name in OUTPUTS + ["att_logits", "f_att"]:
        assert rel_err(getattr(out, name).detach(), golden.expected[f"step0_train/{name}"]) <= 1e-5, name
    losses = model.loss(out, labels)
    for ours, theirs in LOSS_NAMES.items():
        assert rel_err(losses[ours].item(), golden.expected[f"step0_train/{theirs}"]) <= 1e-5, ours
    losses["total"].backward()
    params = dict(model.named_parameters())
    for tf_name, (key, to_torch) in tf_variables(model).items():
        if f"grad0/{tf_name}" not in golden.expected.files:
            continue
        reference = to_torch(golden.expected[f"grad0/{tf_name}"])
        assert rel_err(params[key].grad, reference) <= 1e-3, tf_name


def golden_max_positives(golden) -> int:
    return max(max_positives_of(golden.inputs[f"labels{i}"]) for i in range(4))


def run_four_steps(golden, mode: str = "eager", device: str = "cpu"):
    """The original's four recorded training steps through lesa's one training step (``mode``: a
    ``train.step``); the rate changes between steps (a captured step must see it). The model comes
    back on the CPU."""
    model = golden.model().to(device).train()
    optimizer = TFRMSprop(model.parameters(), lr=float(golden.expected["lr_per_step"][0]))
    step = TrainStep(model, optimizer, mode=mode, max_positives=None if mode == "eager" else golden_max_positives(golden))
    losses_per_step = []
    for i in range(4):
        optimizer.set_lr(float(golden.expected["lr_per_step"][i]))
        features, labels = golden.batch(i)
        losses = step(features.to(device), labels.to(device))
        losses_per_step.append({k: v.item() for k, v in losses.items()})
    return model.cpu(), losses_per_step


@pytest.mark.parametrize("mode", ["eager", pytest.param("compile", marks=pytest.mark.slow)])
def test_four_training_steps_reach_the_originals_weights(golden, mode, device="cpu"):
    if mode != "eager" and golden.cfg["T"] != 10:
        pytest.skip("compiling is slow: the paper's setting is enough")
    model, losses_per_step = run_four_steps(golden, mode, device)
    for step, losses in enumerate(losses_per_step):
        for ours, theirs in LOSS_NAMES.items():
            key = f"step{step}_losses/{theirs}"
            if key in golden.expected.files:
                assert rel_err(losses[ours], golden.expected[key]) <= 1e-4, key

    final = read_tf_checkpoint(golden.root / "final" / "model.ckpt")
    initial = read_tf_checkpoint(golden.root / "init" / "model.ckpt")
    state = model.state_dict()
    compared = 0
    for tf_name, (key, to_torch) in tf_variables(model).items():
        ours = state[key].numpy()
        ref = to_torch(final[tf_name])
        start = to_torch(initial[tf_name])
        if np.linalg.norm(start) == 0:  # all update (e.g. conv biases): relative to the update
            err = np.linalg.norm(ours - ref) / np.linalg.norm(ref - start)
            assert err <= 1e-3, tf_name
        else:
            assert rel_err(ours, ref) <= 1e-5, tf_name
        compared += 1
    model_variables = [n for n in final if is_model_variable(n)]
    assert compared == len(model_variables), sorted(set(model_variables) - set(tf_variables(model)))
    assert float(final["Variable"]) == pytest.approx(golden.expected["lr_per_step"][-1])

    model.eval()
    with torch.no_grad():
        out = model(torch.tensor(golden.inputs["eval_features"]))
    for name in OUTPUTS:
        assert rel_err(getattr(out, name), golden.expected[f"final_eval/{name}"]) <= 1e-4, name


def test_batchnorm_statistics_move_only_in_training(golden):
    model = golden.model()
    if model.bn is None:
        pytest.skip("this golden has no batch-norm")
    before = model.bn.running_mean.clone()
    model.eval()
    with torch.no_grad():
        model(golden.batch(0)[0])
    assert torch.equal(before, model.bn.running_mean)
    model.train()
    with torch.no_grad():
        model(golden.batch(0)[0])
    assert not torch.equal(before, model.bn.running_mean)
