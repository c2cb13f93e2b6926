import hashlib

import numpy as np
import pytest
import torch

from edge.engine.backbones import (
    LITE0_SPEC,
    RANDOM_WEIGHTS_ID,
    WRN50_WEIGHTS,
    build_backbone,
    build_lite0_classifier,
)
from edge.errors import UsageError, WeightsError


def imagenet_top1(model: torch.nn.Module, image: np.ndarray) -> str:
    import cv2
    from torchvision.models import ResNet18_Weights

    short = min(image.shape[:2])
    top, left = (image.shape[0] - short) // 2, (image.shape[1] - short) // 2
    square = cv2.resize(
        image[top : top + short, left : left + short], (224, 224), interpolation=cv2.INTER_AREA
    )
    x = torch.from_numpy(square).permute(2, 0, 1).float()[None] / 255.0
    x = (x - 0.5) / 0.5
    with torch.inference_mode():
        label = int(model(x).argmax())
    return ResNet18_Weights.IMAGENET1K_V1.meta["categories"][label]


def test_packaged_lite0_weights_are_real_imagenet_weights():
    """A cheap guard: random or misloaded weights would not name these images."""
    data = pytest.importorskip("skimage.data")
    model, weights_id = build_lite0_classifier()
    assert weights_id.startswith("sha256:57934424")
    assert imagenet_top1(model, data.chelsea()) in {"tiger cat", "Egyptian cat", "tabby"}
    assert imagenet_top1(model, data.coffee()) == "espresso"


def test_lite0_trunk_levels_and_early_stop():
    backbone = build_backbone("efficientnet_lite0")
    levels = backbone.trunk(torch.zeros(1, 3, 224, 224))
    assert [tuple(level.shape[1:]) for level in levels] == [(40, 28, 28), (112, 14, 14)]
    assert backbone.spec == LITE0_SPEC
    assert not hasattr(backbone.trunk, "conv_head")  # nothing after the deepest level is kept


def test_wide_resnet_missing_weights_names_the_file_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as error:
        build_backbone("wide_resnet50_2")
    message = str(error.value)
    assert WRN50_WEIGHTS.filename in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "95faca4d" in message


def test_wide_resnet_wrong_file_is_refused(tmp_path):
    impostor = tmp_path / WRN50_WEIGHTS.filename
    impostor.write_bytes(b"not the weights")
    with pytest.raises(
        WeightsError, match="SHA-256 starts " + hashlib.sha256(b"not the weights").hexdigest()[:8]
    ):
        build_backbone("wide_resnet50_2", weights=str(impostor))


def test_random_weights_only_when_asked_and_labelled():
    backbone = build_backbone("wide_resnet50_2", random_weights=True)
    assert backbone.random_weights and backbone.weights_id == RANDOM_WEIGHTS_ID
    levels = backbone.trunk(torch.zeros(1, 3, 64, 64))
    assert [level.shape[1] for level in levels] == [512, 1024]


def test_unknown_backbone_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown backbone"):
        build_backbone("resnet18")
