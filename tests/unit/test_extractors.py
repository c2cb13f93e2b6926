"""The extractor interface: every installed runtime gives the same embeddings as torch eager; the
ONNX graph matches torch; the depthwise aggregation matches its definition; batched scoring
matches per-image scoring with a constant number of host reads per batch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.engine.backbones import LITE0_SPEC, WRN50_SPEC, build_backbone
from edge.engine.config import EngineConfig
from edge.engine.extractors import OnnxExtractor, TorchExtractor, build_extractor, export_onnx
from edge.engine.features import LocalAggregation, unfold_neighbourhoods
from edge.errors import UsageError
from edge.imageio import read_image

HAVE_ORT = (
    importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
)
HAVE_OV = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("onnx") is not None
HAVE_TRT = HAVE_ORT and torch.cuda.is_available()


def frames(count: int, side: int = 224, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, side, side, 3), dtype=np.uint8)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("spec", [LITE0_SPEC, WRN50_SPEC], ids=lambda s: s.name)
def test_depthwise_aggregation_equals_the_unfold_definition(spec):
    for channels, width in zip(spec.level_channels, spec.level_widths, strict=True):
        level = torch.randn(2, channels, 14, 19)
        aggregation = LocalAggregation(channels, width)
        assert aggregation.groups == channels  # one group per channel: a depthwise convolution
        assert relative(aggregation(level), unfold_neighbourhoods(level, width)) < 1e-5


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def wrn50():
    return build_backbone("wide_resnet50_2", random_weights=True)


@pytest.mark.skipif(not HAVE_ORT, reason="onnx/onnxruntime not installed (pip install 'edge[station]')")
@pytest.mark.parametrize("name", ["lite0", "wrn50"])
def test_onnx_export_matches_torch(name, request, tmp_path):
    backbone = request.getfixturevalue(name)
    batch = frames(3, seed=1)
    reference = TorchExtractor(backbone)(batch)
    exported = OnnxExtractor(backbone, (224, 224), tmp_path)
    assert exported.path.is_file() and exported.path.parent == tmp_path
    assert relative(exported(batch), reference) <= 1e-5
    assert [p.name for p in tmp_path.iterdir()] == [exported.path.name]  # no temporary file left
    other = np.random.default_rng(2).integers(0, 256, (2, 160, 96, 3), dtype=np.uint8)  # the same graph
    assert relative(exported(other), TorchExtractor(backbone)(other)) <= 1e-5


def installed_extractors() -> list:
    kinds = [pytest.param("torch")]
    kinds.append(pytest.param("onnxruntime", marks=pytest.mark.skipif(not HAVE_ORT, reason="not installed")))
    kinds.append(pytest.param("openvino", marks=pytest.mark.skipif(not HAVE_OV, reason="not installed")))
    kinds.append(pytest.param("tensorrt", marks=pytest.mark.skipif(not HAVE_TRT, reason="needs a CUDA GPU")))
    return kinds


@pytest.mark.parametrize("kind", installed_extractors())
def test_every_installed_extractor_conforms(kind, lite0, tmp_path):
    device = "cuda" if kind == "tensorrt" else "cpu"
    extractor = build_extractor(lite0, kind, device, input_hw=(224, 224), cache_dir=tmp_path)
    batch = frames(3, seed=2)
    out = extractor(batch)
    assert out.shape == (3, 28, 28, LITE0_SPEC.level_widths[0] + LITE0_SPEC.level_widths[1])
    assert out.dtype == torch.float32 and out.device.type == device
    alone = torch.cat([extractor(batch[i : i + 1]) for i in range(3)])
    assert relative(alone, out) < 1e-5  # an image's embedding does not depend on its batch
    tolerance = 2e-2 if kind == "tensorrt" else 1e-5  # TensorRT runs in fp16
    assert relative(out.cpu(), TorchExtractor(lite0)(batch)) < tolerance
    other = extractor(frames(2, side=160))  # another input size still works
    assert other.shape == (2, 20, 20, out.shape[-1])
    assert relative(other.cpu(), TorchExtractor(lite0)(frames(2, side=160))) < tolerance
    extractor.warm_up((224, 224), batches=(1, 2))


def test_missing_runtimes_and_devices_are_named(lite0, tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU"):
            build_extractor(lite0, "torch", "cuda")
        with pytest.raises(UsageError, match="tensorrt extractor needs a CUDA GPU"):
            build_extractor(lite0, "tensorrt", "cpu", input_hw=(224, 224), cache_dir=tmp_path)
    with pytest.raises(UsageError, match="CUDA devices"):
        build_extractor(lite0, "torch", "cpu", precision="fp16")
    with pytest.raises(UsageError, match="unknown extractor"):
        build_extractor(lite0, "tflite")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU"):
            build_extractor(lite0, "openvino", "cuda")


@pytest.mark.skipif(not HAVE_OV, reason="OpenVINO not installed")
def test_openvino_bf16_is_asked_for_by_name_and_stays_near_fp32(lite0, tmp_path):
    """bf16 is never chosen silently: `auto` takes OpenVINO for it on the CPU and names it; the
    embeddings stay within bf16's rounding of fp32's (emulated where the CPU lacks bf16)."""
    fp32 = build_extractor(lite0, "openvino", "cpu", cache_dir=tmp_path)
    bf16 = build_extractor(lite0, "auto", "cpu", cache_dir=tmp_path, precision="bf16")
    assert (fp32.name, bf16.name) == ("openvino-cpu", "openvino-cpu-bf16")
    batch = frames(1, side=160)
    assert 0 < relative(bf16(batch), fp32(batch)) < 0.1
    with pytest.raises(UsageError, match="onnxruntime extractor runs in fp32"):
        build_extractor(lite0, "onnxruntime", "cpu", cache_dir=tmp_path, precision="bf16")
    with pytest.raises(UsageError, match="fp32 or bf16"):
        build_extractor(lite0, "openvino", "cpu", cache_dir=tmp_path, precision="fp16")


def graph_kinds() -> list:
    return [
        pytest.param("onnxruntime", marks=pytest.mark.skipif(not HAVE_ORT, reason="not installed")),
        pytest.param("openvino", marks=pytest.mark.skipif(not HAVE_OV, reason="not installed")),
    ]


@pytest.mark.parametrize("kind", graph_kinds())
def test_one_graph_serves_every_stride_multiple_and_memory_is_bounded(kind, lite0, tmp_path, monkeypatch):
    """Inputs whose sides are multiples of 16 (every area/auto input) share one exported graph;
    another size gets a graph of its own. The first sizes are compiled for their own size; later
    ones run on the free-size compilation (multiples of 16) or replace the least recently used
    size (others). Every size matches torch: none goes to another runtime."""
    monkeypatch.setattr("edge.engine.extractors.MAX_FIXED_SIZES", 2)
    extractor = build_extractor(lite0, kind, "cpu", input_hw=None, cache_dir=tmp_path)
    assert not extractor.runners and extractor.free_size is None
    reference = TorchExtractor(lite0)

    def check(height: int, width: int) -> None:
        batch = np.random.default_rng(height).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
        out = extractor(batch)
        assert out.shape[1:3] == ((height + 7) // 8, (width + 7) // 8)
        assert relative(out, reference(batch)) <= 1e-5, (height, width)

    for size in ((64, 64), (96, 160)):
        check(*size)
    assert list(extractor.runners) == [(64, 64), (96, 160)] and extractor.free_size is None
    check(128, 48)  # a third multiple of 16: the free-size compilation, nothing closed
    assert list(extractor.runners) == [(64, 64), (96, 160)] and extractor.free_size is not None
    check(64, 64)
    check(100, 72)  # no multiple: its own graph, in place of the least recently used size
    assert list(extractor.runners) == [(64, 64), (100, 72)]
    graphs = sorted(p.name.split("-")[1] for p in tmp_path.glob("*.onnx"))
    assert graphs == ["100x72", "any"]


@pytest.mark.skipif(not HAVE_ORT, reason="onnx/onnxruntime not installed (pip install 'edge[station]')")
def test_auto_names_what_it_picked_and_why(lite0, tmp_path, caplog):
    from edge.engine.extractors import AUTO_CPU_RUNTIMES, auto_runtime

    with caplog.at_level("INFO", logger="edge.engine"):
        kind = auto_runtime("efficientnet_lite0", "cpu")
    assert kind == ("openvino" if HAVE_OV else "onnxruntime")
    assert "measured order" in caplog.text and kind in caplog.text
    assert auto_runtime("wide_resnet50_2", "cpu") == AUTO_CPU_RUNTIMES["wide_resnet50_2"][0]
    assert build_extractor(lite0, "auto", "cpu", cache_dir=tmp_path).name == f"{kind}-cpu"


def test_export_writes_its_file_atomically(lite0, tmp_path):
    path = export_onnx(lite0, None, tmp_path / "g.onnx")
    assert path.stat().st_size > 1_000_000 and sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx"]


@pytest.fixture(scope="module")
def images(synthetic_category):
    return [read_image(s.path) for s in synthetic_category.test]


@pytest.mark.parametrize("extractor", ["torch", "auto"])
def test_batched_scoring_equals_per_image_scoring(extractor, synthetic_category, images):
    from edge.engine.model import PatchCore

    train = [read_image(p) for p in synthetic_category.train]
    model = PatchCore.fit(train, EngineConfig(coreset_fraction=0.1, extractor=extractor, batch_size=8))
    together = model.score(images[:8])
    for image, batched in zip(images[:8], together, strict=True):
        (alone,) = model.score([image])
        assert alone.score == pytest.approx(batched.score, rel=1e-6)
        assert alone.max_patch_distance == pytest.approx(batched.max_patch_distance, rel=1e-6)
        assert np.allclose(alone.anomaly_map, batched.anomaly_map, rtol=1e-5, atol=1e-5)


def test_host_reads_per_batch_do_not_grow_with_the_batch(fitted_model, images, monkeypatch):
    """Device → host reads (.cpu, .item, .tolist, .numpy, float()) per micro-batch: a constant,
    not one per image."""
    reads = {"count": 0}
    for name in ("cpu", "item", "tolist", "numpy", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads["count"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    fitted_model.score(images[:1])  # the eq. 7 table is built once per bank, not per batch

    def reads_for(count: int) -> int:
        reads["count"] = 0
        fitted_model.score(images[:count])
        return reads["count"]

    one, eight = reads_for(1), reads_for(8)
    assert one == eight <= 2, (one, eight)


def test_eval_with_onnxruntime_gives_the_torch_figures(synthetic_root, tmp_path):
    if not HAVE_ORT:
        pytest.skip("onnxruntime not installed")
    import json

    from edge.eval.cli import main

    figures = {}
    for kind in ("torch", "onnxruntime"):
        out = tmp_path / f"{kind}.json"
        assert (
            main(
                [str(synthetic_root), "--coreset", "0.1", "--extractor", kind, "--json", str(out), "--quiet"]
            )
            == 0
        )
        figures[kind] = json.loads(out.read_text())["categories"]["part"]
    for metric in ("image_auroc", "pixel_auroc", "pro"):
        assert figures["onnxruntime"][metric] == pytest.approx(figures["torch"][metric], abs=1e-3)
    assert figures["onnxruntime"]["extractor"] == "onnxruntime-cpu"


def test_device_check_smoke_runs_on_the_cpu(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "bench" / "device_check.py"
    result = subprocess.run(
        [sys.executable, str(script), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "device_check.json").read_text()
    assert '"extractor"' in report and "images_per_s" in report
