"""config.py and keys.py: the settings' defaults and the keys, each with one home."""
import ast
import os

from donkey_saliency import config, keys
from donkey_saliency.tubs.read import recording_inputs

SNIPPET = os.path.join(os.path.dirname(__file__), "..", "..", "myconfig_snippets", "saliency.py")


class Cfg(object):
    pass


def test_the_myconfig_snippet_lists_every_setting_with_its_default():
    with open(SNIPPET) as handle:
        tree = ast.parse(handle.read())
    snippet = dict((node.targets[0].id, ast.literal_eval(node.value)) for node in tree.body
                   if isinstance(node, ast.Assign))
    assert snippet == config.DEFAULTS


def test_cfg_overrides_a_default_and_none_means_defaults():
    cfg = Cfg()
    cfg.SALIENCY_ALPHA = 0.8
    assert config.settings(None) == config.DEFAULTS
    assert config.setting(cfg, "SALIENCY_ALPHA") == 0.8
    assert config.setting(cfg, "SALIENCY_COLORMAP") == config.DEFAULT_COLORMAP


def test_the_image_key_follows_the_transformations():
    cfg = Cfg()
    assert config.image_key(cfg) == keys.CAMERA_KEY
    cfg.TRANSFORMATIONS = ["CROP"]
    assert config.image_key(cfg) == keys.CAMERA_TRANS_KEY
    cfg.SALIENCY_IMAGE_KEY = "cam/other"
    assert config.image_key(cfg) == "cam/other"


def test_the_tub_records_the_part_outputs_but_latency():
    assert keys.OUTPUTS == [keys.OVERLAY_KEY, keys.MASK_KEY, keys.LATENCY_KEY, keys.LAG_KEY]
    assert keys.RECORD_KEYS == [k for k in keys.OUTPUTS if k != keys.LATENCY_KEY]
    assert dict(zip(keys.RECORD_KEYS, keys.RECORD_TYPES))[keys.LAG_KEY] == "float"


def test_recording_inputs_adds_each_record_key_once(tmp_path):
    inputs, types, message = recording_inputs(str(tmp_path / "new"), [keys.CAMERA_KEY, keys.MASK_KEY],
                                              ["image_array", "image_array"])
    assert message is None
    assert inputs == [keys.CAMERA_KEY, keys.MASK_KEY, keys.OVERLAY_KEY, keys.LAG_KEY]
    assert types == ["image_array", "image_array", "image_array", "float"]
