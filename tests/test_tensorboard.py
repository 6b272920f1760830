"""inference/training/tensorboard.py: what it writes is read back from the event file with
TensorBoard's own reader (EventAccumulator): tags, steps, values, pixels and hyper-parameters."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install -e '.[tensorboard]')")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

from inference.training import tensorboard as tb  # noqa: E402
from inference.training.tensorboard import TensorBoardLog  # noqa: E402


def read(log: TensorBoardLog) -> EventAccumulator:
    acc = EventAccumulator(str(log.log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def points(acc, tag):
    return [(e.step, pytest.approx(e.value)) for e in acc.Scalars(tag)]


def test_available():
    assert tb.available()


def test_scalars_are_read_back(tmp_path):
    with TensorBoardLog(tmp_path) as log:
        tags = log.scalars(1, {"loss": 812.5, "logs": {"beta_g": 0.25, "greedy": True, "name": "x", "unset": None},
                               "kl_g_per_step": [1.0, 2.5]}, prefix="train")
        log.scalars(2, {"loss": 700.0}, prefix="train")
        log.scalars(2, {"val_loss": 650.0, "metrics": {"fg-ari": 0.9}})
    assert log.log_dir == tmp_path / "tensorboard"
    assert tags == ["train/loss", "train/logs/beta_g", "train/logs/greedy", "train/kl_g_per_step/0",
                    "train/kl_g_per_step/1"]
    acc = read(log)
    assert sorted(acc.Tags()["scalars"]) == sorted(tags + ["val_loss", "metrics/fg-ari"])
    assert points(acc, "train/loss") == [(1, 812.5), (2, 700.0)]
    assert points(acc, "train/logs/beta_g") == [(1, 0.25)]
    assert points(acc, "train/logs/greedy") == [(1, 1.0)]
    assert points(acc, "train/kl_g_per_step/1") == [(1, 2.5)]
    assert points(acc, "metrics/fg-ari") == [(2, 0.9)]


def test_tensors_and_numpy_numbers_count_as_scalars():
    import torch

    assert tb.flatten({"a": torch.tensor(1.5), "b": np.float32(0.5), "c": torch.ones(2), "d": "text"}) == \
        {"a": 1.5, "b": 0.5}


def test_images_are_read_back_pixel_for_pixel(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "recon.png")
    Image.fromarray(np.dstack([rgb, np.full((12, 20), 128, np.uint8)])).save(tmp_path / "alpha.png")  # RGBA
    Image.fromarray(gray).save(tmp_path / "mask.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with TensorBoardLog(tmp_path / "run") as log:
        with pytest.warns(RuntimeWarning, match="could not read the image"):
            tags = log.images(5, [tmp_path / name for name in ("recon.png", "broken.png", "alpha.png", "mask.png")])
    assert tags == ["figures/recon", "figures/alpha", "figures/mask"]
    acc = read(log)
    assert sorted(acc.Tags()["images"]) == sorted(tags)
    for tag, want in (("figures/recon", rgb), ("figures/alpha", rgb), ("figures/mask", np.dstack([gray] * 3))):
        (event,) = acc.Images(tag)
        assert event.step == 5 and (event.height, event.width) == want.shape[:2]
        got = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
        np.testing.assert_array_equal(got, want)


def test_hparams_are_read_back(tmp_path):
    config = {"model": "gnm", "lr": 1e-4, "batch_size": 32, "curriculum": False, "sigma": None,
              "aux_where_mean": [-1.6, 0.0]}
    with TensorBoardLog(tmp_path) as log:
        log.hparams(config, {"val/loss": None, "final/box-ap": 0.75}, step=100)
        log.scalars(10, {"loss": 3.0}, prefix="val")
    acc = read(log)
    content = {tag: plugin_data_pb2.HParamsPluginData.FromString(data)
               for tag, data in acc.PluginTagToContent("hparams").items()}
    start = content["_hparams_/session_start_info"].session_start_info.hparams
    assert start["model"].string_value == "gnm" and start["lr"].number_value == pytest.approx(1e-4)
    assert start["batch_size"].number_value == 32 and start["curriculum"].bool_value is False
    assert start["sigma"].string_value == "None" and start["aux_where_mean"].string_value == "[-1.6, 0.0]"
    metrics = [m.name.tag for m in content["_hparams_/experiment"].experiment.metric_infos]
    assert sorted(metrics) == ["final/box-ap", "val/loss"]
    assert points(acc, "final/box-ap") == [(100, 0.75)]
    assert points(acc, "val/loss") == [(10, 3.0)]  # named only: the curve is the scalars'


def test_a_resumed_run_hides_the_events_after_its_checkpoint(tmp_path):
    with TensorBoardLog(tmp_path) as log:
        for step in range(5):
            log.scalars(step, {"loss": float(step)}, prefix="train")
    with TensorBoardLog(tmp_path, purge_step=3) as log:  # resumed from the checkpoint of step 3
        log.scalars(3, {"loss": 30.0}, prefix="train")
    assert points(read(log), "train/loss") == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0)]


def test_close_twice_and_missing_package(tmp_path, monkeypatch):
    log = TensorBoardLog(tmp_path)
    log.close()
    log.close()
    monkeypatch.setattr(tb, "available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install -e \"\.\[tensorboard\]\""):
        TensorBoardLog(tmp_path / "other")
