import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save, save_file

from edge.engine.artifact import load_model, read_artifact, save_model
from edge.errors import ArtifactError
from edge.files import write_bytes_atomic
from edge.imageio import read_image


@pytest.fixture(scope="module")
def saved(fitted_model, tmp_path_factory):
    return save_model(fitted_model, tmp_path_factory.mktemp("art") / "model.edge")


def _rewrite(source, target, change_meta=None, change_tensors=None):
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(str(source))
    if change_meta:
        change_meta(metadata)
    if change_tensors:
        change_tensors(tensors)
    target.write_bytes(save(tensors, metadata=metadata))
    return target


def test_round_trip_is_bit_exact(fitted_model, saved, synthetic_category):
    loaded = load_model(saved)
    assert torch.equal(loaded.bank.cpu(), fitted_model.bank.cpu())
    assert torch.equal(loaded.level_scales, fitted_model.level_scales)
    assert loaded.config == fitted_model.config
    images = [read_image(s.path) for s in synthetic_category.test[:3]]
    for a, b in zip(loaded.score(images), fitted_model.score(images), strict=True):
        assert a.score == b.score
        assert np.array_equal(a.anomaly_map, b.anomaly_map)
    meta, _ = read_artifact(saved)
    assert meta["backbone"]["weights_id"].startswith("sha256:57934424")
    assert meta["training"]["count"] == len(synthetic_category.train)
    assert meta["config"]["coreset_fraction"] == 0.1
    assert {"created_utc", "bank_shape", "level_widths", "embedding_dim"} <= set(meta)


def test_save_leaves_no_temporary_files(saved):
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


def test_runtime_settings_can_change_at_load(saved):
    assert load_model(saved, search="faiss", batch_size=2).config.search == "faiss"
    with pytest.raises(TypeError):
        load_model(saved, coreset_fraction=0.5)


def test_truncated_file_is_refused(saved, tmp_path):
    data = saved.read_bytes()
    for cut in (0, 7, 100, len(data) // 2, len(data) - 1):
        damaged = tmp_path / f"cut{cut}.edge"
        damaged.write_bytes(data[:cut])
        with pytest.raises(ArtifactError):
            load_model(damaged)


def test_flipped_byte_is_refused(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    data[-5] ^= 0x40  # inside the bank's float data: only the checksum can notice
    damaged = tmp_path / "flipped.edge"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        load_model(damaged)


def test_foreign_files_are_refused(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, str(other))
    with pytest.raises(ArtifactError, match="not an edge model file"):
        load_model(other)
    noise = tmp_path / "noise.edge"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ArtifactError):
        load_model(noise)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_model(tmp_path / "missing.edge")


def test_mismatched_files_are_refused(saved, tmp_path):
    def newer(meta):
        meta["format_version"] = "99"

    with pytest.raises(ArtifactError, match="format version 99"):
        load_model(_rewrite(saved, tmp_path / "v99.edge", change_meta=newer))

    def other_weights(meta):
        inner = json.loads(meta["meta"])
        inner["backbone"]["weights_id"] = "sha256:deadbeef"
        meta["meta"] = json.dumps(inner)

    with pytest.raises(ArtifactError, match="refit"):
        load_model(_rewrite(saved, tmp_path / "weights.edge", change_meta=other_weights))

    def unknown_setting(meta):
        inner = json.loads(meta["meta"])
        inner["config"]["mystery"] = 1
        meta["meta"] = json.dumps(inner)

    with pytest.raises(ArtifactError, match="mystery"):
        load_model(_rewrite(saved, tmp_path / "mystery.edge", change_meta=unknown_setting))


def test_banks_from_before_geometry_modes_and_map_max_keep_their_meaning(saved, tmp_path):
    """A bank saved before `geometry.mode`, `image_score` and `projection` existed was thresholded on
    eq. 7 scores of its crop or whole frame: loading it must not switch it to today's defaults."""

    def older(meta):
        inner = json.loads(meta["meta"])
        del inner["config"]["image_score"], inner["config"]["geometry"]["mode"], inner["config"]["projection"]
        inner["config"]["geometry"].update(resize=256, crop=224)
        meta["meta"] = json.dumps(inner)

    config = load_model(_rewrite(saved, tmp_path / "old.edge", change_meta=older)).config
    assert (config.image_score, config.geometry.mode, config.geometry.crop) == ("eq7", "center_crop", 224)
    assert config.projection == "random"


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "model.edge"
    target.write_bytes(b"old")

    def broken_replace(*_args):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", broken_replace)
    with pytest.raises(OSError):
        write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.edge"]
