"""`sparsemtl predict`: images of any size are predicted as trained and mapped back, and every
file holds what the model predicts (checked against the model run by hand on the same pixels)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import sparsemtl
from sparsemtl.cli import main
from sparsemtl.config import load_config
from sparsemtl.data import build_dataset
from sparsemtl.evaluation.predict import CAPTION_HEIGHT, GAP, TILE_HEIGHT, predict
from sparsemtl.runs import open_model
from sparsemtl.tasks.colours import class_palette
from tests.conftest import TINY

TASKS = "tasks=[segmentation,depth,normals,has_sphere]"
ROW = CAPTION_HEIGHT + TILE_HEIGHT + GAP


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    summary = sparsemtl.train(load_config(None, [*TINY, TASKS, "train.epochs=1", f"train.out_dir={out}"]))
    return summary.run_dir


def write_image(path, height: int, width: int, mode: str = "RGB", seed: int = 0) -> None:
    """A smooth random picture (so resizing matters) of (height, width)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(4, 5, 3))
    picture = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    picture.convert(mode).save(path)


def by_hand(model, path, size=(32, 32)) -> dict[str, np.ndarray]:
    """The model on the file's pixels resized to ``size``, dense outputs resized back (float64)."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None]
    height, width = x.shape[-2:]
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
    with torch.no_grad():
        out = model(x)
    dense = {
        t: F.interpolate(out[t], size=(height, width), mode="bilinear", align_corners=False)
        for t in ("segmentation", "depth", "normals")
    }
    return {
        "labels": dense["segmentation"][0].argmax(0).numpy(),
        "depth": dense["depth"][0, 0].double().numpy(),
        "normals": F.normalize(dense["normals"][0].double(), dim=0).numpy(),
        "has_sphere": torch.sigmoid(out["has_sphere"].double()).item(),
    }


def test_images_of_other_sizes_come_back_at_their_size(run, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder / "wide.png", 40, 56)
    (folder / "notes.txt").write_text("not an image: skipped inside a folder")
    write_image(tmp_path / "tall.png", 70, 30, mode="L", seed=1)
    out = tmp_path / "out"
    result = predict(run, [folder, tmp_path / "tall.png"], out, progress=False)
    assert result.images == 2 and all(p.exists() for p in result.files)

    model = open_model(run).model
    palette = class_palette(6)
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [r["image"] for r in rows] == ["wide", "tall"]
    for (name, height, width), row in zip([("wide", 40, 56), ("tall", 70, 30)], rows):
        ref = by_hand(model, folder / "wide.png" if name == "wide" else tmp_path / "tall.png")
        for task in ("segmentation", "depth", "normals", "depth_mm"):
            assert Image.open(out / f"{name}_{task}.png").size == (width, height), (name, task)

        segmentation = np.asarray(Image.open(out / f"{name}_segmentation.png").convert("RGB"))
        colours = {tuple(c) for c in segmentation.reshape(-1, 3)}
        assert colours <= {tuple(c) for c in palette}, colours
        agree = (segmentation == palette[ref["labels"]]).all(-1).mean()
        assert agree >= 0.99, agree  # argmax ties may fall either way in float32

        depth_file = Image.open(out / f"{name}_depth_mm.png")
        millimetres = np.asarray(depth_file).astype(np.float64)
        assert depth_file.mode.startswith("I;16") and millimetres.max() > 0
        expected = np.clip(ref["depth"] * 1000.0, 0.0, 65535.0)
        assert np.abs(millimetres - expected).max() <= 1.0

        rgb = np.asarray(Image.open(out / f"{name}_normals.png"), dtype=np.float64)
        normals = rgb / 127.5 - 1.0
        assert np.abs(normals - ref["normals"].transpose(1, 2, 0)).max() <= 1.0 / 127.5 + 1e-6

        assert float(row["has_sphere"]) == pytest.approx(ref["has_sphere"], abs=1e-6)
        assert Image.open(out / f"{name}_panel.png").size[1] == ROW + GAP

    index = json.loads((out / "predictions.json").read_text())
    assert [(i["name"], i["size"]) for i in index["images"]] == [("wide", [40, 56]), ("tall", [70, 30])]
    assert index["input_size"] == [32, 32] and index["tasks"]["has_sphere"] == "attribute"
    legend = np.asarray(Image.open(out / "legend-segmentation.png").convert("RGB")).reshape(-1, 3)
    assert all((legend == colour).all(-1).any() for colour in palette), "every class has its swatch"


def test_test_samples_add_the_ground_truth_row(run, tmp_path):
    out = tmp_path / "out"
    predict(run, [], out, batch_size=1, samples=2, progress=False)
    opened = open_model(run)
    dataset = build_dataset(opened.config.data, "test", tuple(opened.specs))
    index = json.loads((out / "predictions.json").read_text())
    for k, record in enumerate(index["images"]):
        sample = dataset[k]
        name = f"test-{k:04d}"
        assert record["name"] == name and record["truth"] == {"has_sphere": float(sample["has_sphere"])}
        saved = np.asarray(Image.open(out / f"{name}_input.png"), dtype=np.float64) / 255.0
        assert np.abs(saved - sample["image"].numpy().transpose(1, 2, 0)).max() <= 0.5 / 255 + 1e-6
        with torch.no_grad():
            logits = opened.model(sample["image"][None])["segmentation"][0]
        segmentation = np.asarray(Image.open(out / f"{name}_segmentation.png"))
        assert (segmentation == class_palette(6)[logits.argmax(0).numpy()]).all(-1).mean() >= 0.99
        panel = Image.open(out / f"{name}_panel.png")
        assert panel.size[1] == 2 * ROW + GAP, "a prediction row and a ground-truth row"


def test_cli_names_repeated_stems_apart(run, tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_image(tmp_path / folder / "frame.jpg", 48, 64, seed=len(folder))
    out = tmp_path / "out"
    argv = ["predict", str(run), str(tmp_path / "a" / "frame.jpg"), str(tmp_path / "b"), "--out", str(out)]
    assert main([*argv, "--no-progress", "--batch-size", "1"]) == 0
    assert "predicted 2 image(s)" in capsys.readouterr().out
    names = [r["image"] for r in csv.DictReader((out / "predictions.csv").open())]
    assert names == ["frame", "frame-2"] and (out / "frame-2_depth_mm.png").exists()
