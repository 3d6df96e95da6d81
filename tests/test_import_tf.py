"""`lesa import-tf`: original TF checkpoints -> native checkpoints, configuration inferred."""
import json
import shutil

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
    err = capsys.readouterr().err
    assert "--config nus_wide_zero_shot --data-dir DIR" in err and "--vectors PKL" in err
    assert "wiki_contexts/NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300" in err
    assert not (tmp_path / "m.pt").exists()


def _nus_data_dir(shared_data, root):
    """A data folder as the message describes it, from the real files."""
    (root / "wiki_contexts").mkdir(parents=True)
    (root / "NUS_WIDE" / "NUS_WID_Tags").mkdir(parents=True)
    (root / "NUS_WIDE" / "ConceptsList").mkdir(parents=True)
    shutil.copy(shared_data("nus_wide", "NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300"), root / "wiki_contexts")
    shutil.copy(shared_data("nus_wide", "TagList1k.txt"), root / "NUS_WIDE" / "NUS_WID_Tags")
    shutil.copy(shared_data("nus_wide", "Concepts81.txt"), root / "NUS_WIDE" / "ConceptsList")
    return root


def test_import_tf_with_the_configuration_and_its_data_folder(golden_root, shared_data, tmp_path, capsys):
    ckpt = golden_root("model_nus") / "init" / "model.ckpt"
    data = _nus_data_dir(shared_data, tmp_path / "data")
    out = tmp_path / "m.pt"
    assert main(["import-tf", str(ckpt), "--out", str(out), "--config", "nus_wide_zero_shot",
                 "--data-dir", str(data)]) == 0
    assert "925 seen, 81 unseen labels" in capsys.readouterr().out
    loaded = load_model(out)
    assert len(loaded.seen_names) == 925 and len(loaded.unseen_names) == 81
    # a missing pickle says where to get it
    (data / "wiki_contexts" / "NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300").unlink()
    assert main(["import-tf", str(ckpt), "--out", str(tmp_path / "n.pt"), "--config", "nus_wide_zero_shot",
                 "--data-dir", str(data)]) == 1
    err = capsys.readouterr().err
    assert "wiki_contexts/ folder" in err and "lesa build-vectors" in err
    # so do NUS-WIDE's lists
    shutil.rmtree(data / "NUS_WIDE")
    assert main(["import-tf", str(ckpt), "--out", str(tmp_path / "n.pt"), "--config", "nus_wide_zero_shot",
                 "--data-dir", str(data)]) == 1
    assert "TagList1k.txt not found (looked for" in capsys.readouterr().err
    assert not (tmp_path / "n.pt").exists()


def test_import_tf_refuses_a_checkpoint_that_is_not_lesa(golden_root, tmp_path, capsys):
    vgg = golden_root("vgg19_slim") / "vgg_19.ckpt"
    assert main(["import-tf", str(vgg), "--out", str(tmp_path / "m.pt")]) == 1
    assert "not a LESA checkpoint" in capsys.readouterr().err
