import hashlib

import numpy as np
import pytest
import torch

from edge.engine.backbones import (
    LITE0_SPEC,
    LITE_SPECS,
    LITE_WEIGHTS,
    RANDOM_WEIGHTS_ID,
    WRN50_WEIGHTS,
    build_backbone,
    build_lite_classifier,
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


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_packaged_lite_weights_are_real_imagenet_weights(variant):
    """A cheap guard: random or misloaded weights would not name these images."""
    data = pytest.importorskip("skimage.data")
    model, weights_id = build_lite_classifier(variant=variant)
    assert weights_id.startswith("sha256:" + LITE_WEIGHTS[variant].sha256_prefix)
    assert imagenet_top1(model, data.chelsea()) in {"tiger cat", "Egyptian cat", "tabby"}
    assert imagenet_top1(model, data.coffee()) == "espresso"


def test_lite0_trunk_levels_and_early_stop():
    backbone = build_backbone("efficientnet_lite0")
    levels = backbone.trunk(torch.zeros(1, 3, 224, 224))
    assert [tuple(level.shape[1:]) for level in levels] == [(40, 28, 28), (112, 14, 14)]
    assert backbone.spec == LITE0_SPEC
    assert len(backbone.trunk.blocks) == 11  # nothing after the deepest level (stage 4) is kept


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_scaled_lite_trunks_give_their_declared_levels(variant):
    backbone = build_backbone(LITE_SPECS[variant].name)
    levels = backbone.trunk(torch.zeros(1, 3, 224, 224))
    channels = LITE_SPECS[variant].level_channels
    assert [tuple(level.shape[1:]) for level in levels] == [(channels[0], 28, 28), (channels[1], 14, 14)]


def test_an_ensemble_is_its_members_side_by_side():
    """One trunk, one graph: the ensemble's embedding is each member's own embedding (on its own
    normalisation), concatenated in the order named."""
    from edge.engine.extractors import build_extractor

    pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    names = ["efficientnet_lite2", "efficientnet_lite0"]
    ensemble = build_backbone("+".join(names))
    assert ensemble.spec.level_widths == (432, 120, 360, 112)
    together = build_extractor(ensemble, "torch")(pixels)
    alone = [build_extractor(build_backbone(name), "torch")(pixels) for name in names]
    assert torch.allclose(together, torch.cat(alone, dim=-1), rtol=1e-5, atol=1e-5)
    assert ensemble.weights_id.count("sha256:") == 2 and not ensemble.random_weights


def test_an_ensemble_of_unknown_or_repeated_members_is_a_usage_error():
    with pytest.raises(UsageError, match="distinct ones joined by"):
        build_backbone("efficientnet_lite0+efficientnet_lite0")
    with pytest.raises(UsageError, match="unknown backbone"):
        build_backbone("efficientnet_lite0+resnet18")


def test_lite0_equals_timm_tf_efficientnet_lite0():
    """The hand-written network computes exactly what timm's faithful TF-padding variant does."""
    timm = pytest.importorskip("timm")
    ours, _ = build_lite_classifier()
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    stages = [(s, i) for s, blocks in enumerate(reference.blocks) for i in range(len(blocks))]
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    renamed = {}
    for key, value in ours.state_dict().items():
        head, _, rest = key.partition(".")
        if head == "_blocks":
            number, _, rest = rest.partition(".")
            layer, _, leaf = rest.partition(".")
            stage, index = stages[int(number)]
            renamed[f"blocks.{stage}.{index}.{(first if stage == 0 else other)[layer]}.{leaf}"] = value
        else:
            renamed[f"{top[head]}.{rest}"] = value
    reference.load_state_dict(renamed, strict=True)
    for size in ((224, 224), (223, 301)):  # odd sizes exercise the asymmetric "same" padding
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


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


def test_same_padding_equals_tensorflows_rule_at_every_size():
    """The padding written through the remainder (so that one exported graph serves every size
    that is a multiple of the stride) is TensorFlow's "SAME" rule at every size: the same numbers
    as padding by (ceil(size / s) - 1) * s + k - size, split low/high as TensorFlow does."""
    import math

    import torch
    import torch.nn.functional as F

    from edge.engine.efficientnet_lite import SameConv2d

    torch.manual_seed(0)
    for kernel in (1, 3, 5):
        for stride in (1, 2):
            conv = SameConv2d(2, 3, kernel, stride)
            for height, width in [(size, 70 - size) for size in range(1, 70, 3)]:
                image = torch.randn(1, 2, height, width)
                pads = []
                for size in (width, height):
                    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
                    pads += [total // 2, total - total // 2]
                expected = F.conv2d(F.pad(image, pads), conv.weight, None, stride)
                assert torch.equal(conv(image), expected), (kernel, stride, height, width)
