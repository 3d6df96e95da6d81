"""The real released NUS-WIDE checkpoint index (its data file is not in ../shared)."""
import pytest

from lesa import CheckpointError, LESA, load_tf_checkpoint
from lesa.tf_formats import list_tf_checkpoint
from lesa.tf_weights import infer_config

import numpy as np


def test_released_index_lists_and_is_the_zero_shot_configuration(shared_data, golden_root):
    index = shared_data("released_nus_wide", "model.ckpt.index")
    listing = list_tf_checkpoint(index)
    # the same variables as the model_nus golden's initial checkpoint (weights, slots, rate, flag)
    assert set(listing) == set(list_tf_checkpoint(golden_root("model_nus") / "init" / "model.ckpt"))
    assert listing["conv/is_train"].dtype == np.bool_
    dtype, shape = listing["conv/conv/weights"]
    assert shape == (2, 2, 512, 512) and dtype == np.float32
    assert listing["prediction_frac/W"][1] == (512, 300)
    cfg = infer_config({name: shape for name, (dtype, shape) in listing.items()})
    assert (cfg.n_attention, cfg.batchnorm, cfg.trainable_vecs, cfg.separate_w1) == (10, True, False, False)


def test_loading_without_the_data_file_is_a_clear_error(shared_data, tmp_path):
    index = shared_data("released_nus_wide", "model.ckpt.index")
    model = LESA(np.ones((925, 300)), np.ones((81, 300)))
    with pytest.raises(CheckpointError, match="data file missing"):
        load_tf_checkpoint(model, index)
