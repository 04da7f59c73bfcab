"""The typed checkpoint: what a saved dict is (student or teacher, streams, inputs, crop) is decided in one place."""
from __future__ import annotations

import pytest
import torch

from models.base import InputSpec
from models.checkpoint import Checkpoint, load_checkpoint, model_input_names, save_checkpoint, spec_to_dict
from models.students import StudentConfig, build_student

KP = {"num_keypoints": 5, "keypoint_layout": "toy5", "rgb_size": 0, "flow_size": 0}
RGB = {"num_keypoints": 0, "keypoint_layout": "", "rgb_size": 16, "flow_size": 0}


def saved(**entries):
    """A checkpoint dict as the trainers write it, minus what a case leaves out."""
    return {"model_config": {}, "input_spec": KP, "vocab": ["<blank>", "A", "B"], "model": {}, **entries}


@pytest.mark.parametrize("entries, kind, streams, inputs", [
    # a teacher names its streams in its ModelConfig; a trainer also saves them
    ({"model_config": {"streams": ["rgb", "keypoints"]}, "streams": ["rgb", "keypoints"]}, "teacher",
     ("rgb", "keypoints"), ("rgb", "keypoints", "keypoints_mask")),
    # an older teacher file without "streams": from its config
    ({"model_config": {"streams": ["flow"]}}, "teacher", ("flow",), ("flow",)),
    # an older teacher without either: keypoints
    ({"model_config": {"hidden": 8}}, "teacher", ("keypoints",), None),
    # a student: its config has a kind (saved as model_config and student_config)
    ({"model_config": {"kind": "landmark"}, "student_config": {"kind": "landmark"}}, "student", ("keypoints",),
     ("keypoints", "keypoints_mask")),
    # a student found by student_config alone; an RGB kind reads rgb
    ({"model_config": {"hidden": 8}, "student_config": {"kind": "lrinet"}}, "student", ("rgb",), ("rgb",)),
    # saved streams win over what the config implies
    ({"model_config": {"kind": "landmark"}, "streams": ["keypoints", "rgb"]}, "student", ("keypoints", "rgb"),
     ("keypoints", "keypoints_mask")),
])
def test_kind_streams_and_inputs_are_decided_once(entries, kind, streams, inputs):
    ck = Checkpoint.from_dict(saved(**entries))
    assert ck.kind == kind and ck.is_student == (kind == "student")
    assert ck.streams == streams
    if inputs is None:
        with pytest.raises(ValueError, match="neither 'streams' nor 'kind'"):
            ck.input_names
    else:
        assert ck.input_names == inputs == model_input_names(ck.config)
    assert ck.vocab == ("<blank>", "A", "B") and isinstance(ck.spec, InputSpec)


@pytest.mark.parametrize("entries, crop", [
    ({"crop_size": 12}, 12),
    ({"crop_size": 0}, 0),
    ({"input_spec": {**RGB, "rgb_size": 12}, "cache": {"config": {"rgb_size": 16}}}, 12),  # older file: spec < cache
    ({"input_spec": RGB, "cache": {"config": {"rgb_size": 16}}}, 0),  # same size: no crop
])
def test_evaluation_crop(entries, crop):
    assert Checkpoint.from_dict(saved(model_config={"streams": ["rgb"]}, **entries)).crop_size == crop


def test_training_entries_and_their_defaults():
    ck = Checkpoint.from_dict(saved(model_config={"streams": ["keypoints"]}, epoch=3, best=12.5,
                                    train_config={"rules": "phoenix14"}, cache={"dataset": "toy", "config": {"a": 1}}))
    assert (ck.epoch, ck.best, ck.rules, ck.dataset, ck.cache_config) == (3, 12.5, "phoenix14", "toy", {"a": 1})
    bare = Checkpoint.from_dict(saved(model_config={"streams": ["keypoints"]}))
    assert (bare.epoch, bare.best, bare.rules, bare.dataset, bare.cache_config) == (None, None, "none", None, {})


def test_the_file_format_is_the_saved_dict_and_build_restores_the_weights(tmp_path):
    cfg = StudentConfig(kind="landmark")
    spec = InputSpec(**{**KP, "num_keypoints": 543, "keypoint_layout": "mediapipe_holistic_543"})
    torch.manual_seed(0)
    model = build_student(cfg, 3, spec)
    state = saved(model_config=cfg.to_dict(), student_config=cfg.to_dict(), input_spec=spec_to_dict(spec),
                  model=model.state_dict(), epoch=1)
    save_checkpoint(tmp_path / "s.pt", state)
    raw = torch.load(tmp_path / "s.pt", weights_only=True)  # plain dict on disk, as before
    assert set(raw) == set(state) | {"format"}
    ck = load_checkpoint(tmp_path / "s.pt")
    assert ck.path == tmp_path / "s.pt" and ck.raw.keys() == raw.keys()
    rebuilt = ck.build()
    assert not rebuilt.training
    for k, v in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v), k
