"""`lesa import-tf`: original TF checkpoints -> native checkpoints, configuration inferred."""
import json

import numpy as np
import pytest
import torch

from conftest import rel_err
from lesa.checkpoint import load_model
from lesa.cli import main
from lesa.datasets.embeddings import save_vector_pair

OUTPUTS = ["logits", "zs_logits", "gzs_logits", "alphas"]
CONFIG_KEYS = {"T": "n_attention", "is_separate_W_1": "separate_w1", "is_batchnorm": "batchnorm",
               "trainable_vecs": "trainable_vecs", "is_conv": "conv"}


@pytest.mark.parametrize("name", ["model_nus", "model_variant"])
def test_import_tf_reproduces_the_final_eval_outputs(golden_root, tmp_path, capsys, name):
    root = golden_root(name)
    inputs = np.load(root / "inputs.npz")
    expected = np.load(root / "expected.npz")
    golden_config = json.loads((root / "config.json").read_text())
    vectors = save_vector_pair(tmp_path / "vectors.pkl", inputs["seen_vecs"], inputs["unseen_vecs"])
    out = tmp_path / "model.pt"
    assert main(["import-tf", str(root / "final" / "model.ckpt"), "--out", str(out),
                 "--vectors", str(vectors)]) == 0
    assert f"T={golden_config['T']}" in capsys.readouterr().out

    model = load_model(out).model.eval()
    for theirs, ours in CONFIG_KEYS.items():
        assert getattr(model.config, ours) == golden_config[theirs], ours
    with torch.no_grad():
        result = model(torch.tensor(inputs["eval_features"]))
    for key in OUTPUTS:
        assert rel_err(getattr(result, key), expected[f"final_eval/{key}"]) <= 1e-5, key


def test_import_tf_without_vectors_says_what_to_give(golden_root, tmp_path, capsys):
    root = golden_root("model_nus")
    assert main(["import-tf", str(root / "init" / "model.ckpt"), "--out", str(tmp_path / "m.pt")]) == 1
    assert "--config" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_import_tf_refuses_a_checkpoint_that_is_not_lesa(golden_root, tmp_path, capsys):
    vgg = golden_root("vgg19_slim") / "vgg_19.ckpt"
    assert main(["import-tf", str(vgg), "--out", str(tmp_path / "m.pt")]) == 1
    assert "not a LESA checkpoint" in capsys.readouterr().err
