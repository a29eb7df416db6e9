"""check_data, the pre-flight data check: tiny NYUD-MT, MTAN and CelebAMask-HQ trees built in tmp_path,
each broken in one way, and the real sample files (read from ../shared, skipped when absent).

Every bad input must raise one DataError line naming the file (or folder / config key) and what was
expected, before any training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from sparsemtl.config import ConfigError, DataConfig
from sparsemtl.data import build_dataset
from sparsemtl.data.celebamask import prepare_celebamask
from sparsemtl.data.check import BadSample, check_data
from sparsemtl.data.nyuv2 import DataError
from sparsemtl.data.sample_check import verify_image
from sparsemtl.data.synthetic_scenes import SyntheticScenes

from .test_celebamask import CELEBA, make_release
from .test_nyuv2 import NYU_SAMPLES, SIZE, make_mtan, make_nyud

TASKS = ("segmentation", "depth", "normals")
TRAIN = [f"t{i}" for i in range(10)]
TEST = ["a", "b", "c"]


def _nyud(tmp_path: Path) -> Path:
    return make_nyud(tmp_path / "nyud", TRAIN, TEST)


def _cfg(root: Path, **overrides) -> DataConfig:
    return DataConfig(name="nyuv2", root=str(root), **overrides)


def _fails(cfg: DataConfig, tasks=TASKS, splits=("train", "val", "test")) -> str:
    """The one-line message of the DataError check_data raises."""
    with pytest.raises(DataError) as err:
        check_data(cfg, tasks, splits)
    message = str(err.value)
    assert "\n" not in message and message == " ".join(message.split())
    return message


def _truncate(path: Path, keep: int = 200) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _edit_label(path: Path, edit: Callable[[np.ndarray], np.ndarray]) -> None:
    Image.fromarray(edit(np.asarray(Image.open(path)).copy()).astype(np.uint8)).save(path)


def _mm_depth(path: Path) -> None:
    """Valid depths 1000, 2000, 3000, 4000 (median 2500), everything else 0 = invalid."""
    depth = np.zeros(SIZE, np.float32)
    depth[0, :4] = (1000, 2000, 3000, 4000)
    np.save(path, depth)


# ---------------------------------------------------------------- positive cases


def test_clean_tree_passes_and_report_counts_samples(tmp_path: Path) -> None:
    root = _nyud(tmp_path)
    report = check_data(_cfg(root), TASKS)
    # 10 official train ids, val_fraction 0.1 -> 1 carved out; 3 test ids; 4 files per sample
    counts = {name: (s.samples, s.checked, s.files, len(s.bad)) for name, s in report.splits.items()}
    assert counts == {"train": (9, 9, 36, 0), "val": (1, 1, 4, 0), "test": (3, 3, 12, 0)}
    assert report.ok and report.errors == [] and report.failure() is None
    record = json.loads(json.dumps(report.to_dict()))
    assert record["ok"] is True and record["splits"]["test"]["samples"] == 3 and record["bad_samples"] == []
    lines = report.summary().splitlines()
    assert lines[0].startswith(f"data check of nyuv2 at {root}: OK (") and len(lines) == 4
    assert lines[3].startswith("  test: 3 samples, 3 checked (12 files), 0 bad")


def test_only_requested_splits_and_tasks_are_read(tmp_path: Path) -> None:
    root = _nyud(tmp_path)
    shutil.rmtree(root / "normals")
    report = check_data(_cfg(root), ("segmentation", "depth"), splits=("test",))
    assert list(report.splits) == ["test"] and report.splits["test"].files == 9


def test_all_bad_files_are_counted_in_one_line(tmp_path: Path) -> None:
    root = _nyud(tmp_path)
    _truncate(root / "images" / "a.png")
    (root / "depth" / "c.npy").unlink()
    message = _fails(_cfg(root))
    assert message.startswith(f"{root / 'images' / 'a.png'}: corrupt or truncated image (")
    assert message.endswith(" (and 1 more)")


def test_skip_bad_samples_lists_them_and_the_loader_drops_the_same(tmp_path: Path) -> None:
    root = _nyud(tmp_path)
    _truncate(root / "images" / "a.png")
    (root / "depth" / "c.npy").unlink()
    cfg = _cfg(root, skip_bad_samples=True)
    report = check_data(cfg, TASKS)
    assert report.ok and report.errors == []
    assert [(b.split, b.sample_id, b.file) for b in report.bad_samples] == [
        ("test", "a", str(root / "images" / "a.png")),
        ("test", "c", str(root / "depth" / "c.npy")),
    ]
    assert report.bad_samples[1].reason == f"{root / 'depth' / 'c.npy'}: missing depth label file"
    assert report.to_dict()["bad_samples"][1] == report.bad_samples[1]._asdict()
    assert "OK, 2 bad sample(s) skipped" in report.summary().splitlines()[0]
    with pytest.warns(UserWarning, match=r"NYU-v2 test: skipped 2 bad sample\(s\) of 3"):
        dataset = build_dataset(cfg, "test", TASKS)
    assert dataset.sample_ids == ["b"] and [s for s, _ in dataset.skipped] == ["a", "c"]


def test_depth_scale_makes_a_millimetre_tree_pass_and_gives_metres(tmp_path: Path) -> None:
    root = _nyud(tmp_path)
    for sample_id in TRAIN + TEST:
        _mm_depth(root / "depth" / f"{sample_id}.npy")
    message = _fails(_cfg(root), ("depth",))
    assert message.startswith(
        f"{root / 'depth' / 't0.npy'}: median depth 2500 (after data.depth_scale=1) is implausible for metres; "
        "expected 0.05..100 — set data.depth_scale to metres per stored unit, e.g. 0.001 if the files hold millimetres "
        "(9 of 9 depth files)"
    )
    cfg = _cfg(root, depth_scale=0.001)
    assert check_data(cfg, ("depth",)).ok
    depth = build_dataset(cfg, "test", ("depth",))[0]["depth"][0]
    assert depth[0, :4].tolist() == pytest.approx([1.0, 2.0, 3.0, 4.0]) and (depth[1:] == 0).all()


def test_one_odd_depth_file_is_a_bad_sample_not_a_wrong_scale(tmp_path: Path) -> None:
    root = _nyud(tmp_path)
    _mm_depth(root / "depth" / "c.npy")
    report = check_data(_cfg(root, skip_bad_samples=True), ("depth",))
    assert report.ok and [b.sample_id for b in report.bad_samples] == ["c"]


def test_synthetic_datasets_report_sizes_without_generating(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_render(*args, **kwargs):
        raise AssertionError("the check must not generate samples")

    monkeypatch.setattr(SyntheticScenes, "render", staticmethod(no_render))
    report = check_data(DataConfig(num_train=20, num_val=5, num_test=7), ["segmentation", "depth"])
    assert {n: (s.samples, s.checked) for n, s in report.splits.items()} == {
        "train": (20, 0),
        "val": (5, 0),
        "test": (7, 0),
    }
    assert report.ok and "generated in memory" in report.summary()


def test_unknown_split_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^unknown split 'dev'; expected one of train, val, test$"):
        build_dataset(DataConfig(), "dev")


# ---------------------------------------------------------------- bad NYUD-MT trees


def _jpeg_truncated(root: Path) -> None:
    Image.open(root / "images" / "c.png").save(root / "images" / "c.jpg", quality=95)
    (root / "images" / "c.png").unlink()
    _truncate(root / "images" / "c.jpg", keep=(root / "images" / "c.jpg").stat().st_size - 40)


def _odd_size_sample(root: Path) -> None:
    other = make_nyud(root.parent / "other", [], ["c"], size=(20, 30))
    for folder, ext in (("images", ".png"), ("segmentation", ".png"), ("depth", ".npy"), ("normals", ".npy")):
        (other / folder / f"c{ext}").replace(root / folder / f"c{ext}")


def _partly_long_normals(root: Path) -> None:
    """Rows 0-1 all-zero (invalid), rows 2-7 length 3 (192 px), rows 8-23 unit (512 px): 192/704 = 27% off."""
    normals = np.zeros((*SIZE, 3), np.float32)
    normals[2:8, :, 2] = 3.0
    normals[8:, :, 0] = 1.0
    np.save(root / "normals" / "c.npy", normals)


def _negative_depth(root: Path) -> None:
    depth = np.load(root / "depth" / "c.npy")
    depth[4, 4] = -1.0
    np.save(root / "depth" / "c.npy", depth)


def _nan_depth(root: Path) -> None:
    depth = np.load(root / "depth" / "c.npy")
    depth[5, 5] = np.nan
    np.save(root / "depth" / "c.npy", depth)


NYUD_SAMPLE_CASES = {
    "truncated PNG image": (
        lambda r: _truncate(r / "images" / "c.png"),
        "images/c.png",
        "corrupt or truncated image",
    ),
    "JPEG image missing its last 40 bytes": (_jpeg_truncated, "images/c.jpg", "corrupt or truncated image"),
    "missing depth file": (lambda r: (r / "depth" / "c.npy").unlink(), "depth/c.npy", "missing depth label file"),
    "label smaller than its image": (
        lambda r: _edit_label(r / "segmentation" / "c.png", lambda a: a[:12]),
        "segmentation/c.png",
        "segmentation is 12x32 but its image is 24x32",
    ),
    "class id 41 in a 40-class tree": (
        lambda r: _edit_label(r / "segmentation" / "c.png", lambda a: np.where(a == a.max(), 41, a)),
        "segmentation/c.png",
        "class id 41 out of range; expected integers 0..40 (0 = void) for 40 classes (data.classes)",
    ),
    "NaN depth": (_nan_depth, "depth/c.npy", "depth contains NaN or inf"),
    "negative depth": (_negative_depth, "depth/c.npy", "negative depth -1; expected non-negative values"),
    "unreadable .npy": (
        lambda r: (r / "depth" / "c.npy").write_bytes(b"not a numpy file"),
        "depth/c.npy",
        "unreadable .npy file (no NumPy header)",
    ),
    "one depth file in millimetres": (
        lambda r: _mm_depth(r / "depth" / "c.npy"),
        "depth/c.npy",
        "median depth 2500 (after data.depth_scale=1) is implausible for metres; expected 0.05..100",
    ),
    "normals not unit length": (
        _partly_long_normals,
        "normals/c.npy",
        "27% of the non-zero normals have length outside 0.9..1.1 (median length 1); "
        "expected unit vectors with all-zero = invalid",
    ),
    "image of another size (no resize)": (
        _odd_size_sample,
        "images/c.png",
        "size 20x30 differs from the split's 24x32 (set data.resize to resize)",
    ),
}


@pytest.mark.parametrize("case", list(NYUD_SAMPLE_CASES))
def test_bad_nyud_sample_is_found_before_training(tmp_path: Path, case: str) -> None:
    corrupt, file, problem = NYUD_SAMPLE_CASES[case]
    root = _nyud(tmp_path)
    corrupt(root)
    message = _fails(_cfg(root))
    assert message.startswith(f"{root / file}: ") and problem in message
    report = check_data(_cfg(root, skip_bad_samples=True), TASKS)
    assert report.ok and report.bad_samples == [BadSample("test", "c", str(root / file), message)]
    with pytest.warns(UserWarning, match=r"NYU-v2 test: skipped 1 bad sample\(s\) of 3"):
        assert build_dataset(_cfg(root, skip_bad_samples=True), "test", TASKS).sample_ids == ["a", "b"]


def _labels_mod_14(root: Path) -> None:
    for sample_id in TRAIN + TEST:
        _edit_label(root / "segmentation" / f"{sample_id}.png", lambda a: a % 14)


NYUD_DATASET_CASES = {
    "id listed twice": (
        lambda r: (r / "gt_sets" / "train.txt").write_text("t0\nt1\nt0\n"),
        {},
        "gt_sets/train.txt:3: id 't0' is listed twice (first on line 1); expected each id once",
    ),
    "id in train and test": (
        lambda r: (r / "gt_sets" / "val.txt").write_text("a\nb\nc\nt1\n"),
        {},
        "gt_sets/val.txt:4: id 't1' is also in {root}/gt_sets/train.txt (line 2); a sample must be in one split only",
    ),
    "empty test split": (
        lambda r: (r / "gt_sets" / "val.txt").write_text("\n"),
        {},
        "gt_sets/val.txt: empty split file; expected one sample id per line",
    ),
    "13-class tree read with 40 classes": (
        _labels_mod_14,
        {},
        "segmentation: looks like a 13-class tree (ids 0..13, 0 = void) but it is read with 40 classes: "
        "no label file uses ids above 13; set data.classes=13",
    ),
    "40-class tree read with 13 classes": (
        lambda r: None,
        {"classes": 13},
        "segmentation: looks like a 40-class tree (ids 0..40, 0 = void) but it is read with 13 classes: "
        "9 of 9 label files use ids above 13; set data.classes=40",
    ),
    "metre tree read with data.depth_scale=0.001": (
        lambda r: None,
        {"depth_scale": 0.001},
        "(after data.depth_scale=0.001) is implausible for metres; expected 0.05..100 — set data.depth_scale to "
        "metres per stored unit, e.g. 1 if the files hold metres (9 of 9 depth files)",
    ),
}


@pytest.mark.parametrize("case", list(NYUD_DATASET_CASES))
def test_dataset_level_problem_is_an_error_even_when_skipping(tmp_path: Path, case: str) -> None:
    corrupt, overrides, problem = NYUD_DATASET_CASES[case]
    root = _nyud(tmp_path)
    corrupt(root)
    for skip in (False, True):
        message = _fails(_cfg(root, skip_bad_samples=skip, **overrides))
        assert message.startswith(str(root)) and problem.format(root=root) in message
    report = check_data(_cfg(root, **overrides), TASKS, raise_errors=False)
    assert len(report.errors) == len(set(report.errors)) and not report.ok


def test_13_class_tree_passes_with_13_classes(tmp_path: Path) -> None:
    root = _nyud(tmp_path)
    _labels_mod_14(root)
    assert check_data(_cfg(root, classes=13), TASKS).ok


# ---------------------------------------------------------------- bad MTAN trees


def _mtan_label_13(root: Path) -> None:
    np.save(root / "val" / "label" / "2.npy", np.full(SIZE, 13.0, np.float32))


def _mtan_image_in_0_255(root: Path) -> None:
    np.save(root / "val" / "image" / "1.npy", np.full((*SIZE, 3), 255.0))


MTAN_CASES = {
    "40 classes configured": (
        lambda r: None,
        {"classes": 40},
        "",
        "an MTAN tree has 13 classes (label ids -1..12) but data.classes is 40; set data.classes=13 or 0",
    ),
    "class id 13": (
        _mtan_label_13,
        {},
        "val/label/2.npy",
        "class id 13 out of range; expected integers -1..12 (-1 = void) for 13 classes (data.classes)",
    ),
    "image values in 0..255": (
        _mtan_image_in_0_255,
        {},
        "val/image/1.npy",
        "image values span [255, 255], expected [0, 1]",
    ),
    "index gap": (
        lambda r: (r / "val" / "image" / "1.npy").unlink(),
        {},
        "val/image/1.npy",
        "missing; MTAN indices must be contiguous from 0",
    ),
}


@pytest.mark.parametrize("case", list(MTAN_CASES))
def test_bad_mtan_tree(tmp_path: Path, case: str) -> None:
    corrupt, overrides, file, problem = MTAN_CASES[case]
    root = make_mtan(tmp_path / "mtan", 10, 3)
    corrupt(root)
    message = _fails(_cfg(root, **overrides))
    assert message.startswith(f"{root / file}: " if file else f"{root}: ") and problem in message


# ---------------------------------------------------------------- bad prepared CelebAMask-HQ trees


@pytest.fixture
def celeba(tmp_path: Path) -> Path:
    """Splits: train 0, val 1 2, test 2001 (see test_celebamask.ORIG)."""
    prepare_celebamask(make_release(tmp_path / "raw"), tmp_path / "out", size=8)
    return tmp_path / "out"


def _celeba_cfg(root: Path, **overrides) -> DataConfig:
    return DataConfig(name="celebamask-hq", root=str(root), **overrides)


def _drop_attributes(root: Path, sample_id: str) -> None:
    table = json.loads((root / "attributes.json").read_text())
    del table["values"][sample_id]
    (root / "attributes.json").write_text(json.dumps(table))


CELEBA_CASES = {
    "empty val split": (
        lambda r: (r / "splits" / "val.txt").write_text(""),
        {},
        "splits/val.txt",
        "empty split file; expected one sample id per line",
    ),
    "empty test split": (
        lambda r: (r / "splits" / "test.txt").write_text("\n\n"),
        {},
        "splits/test.txt",
        "empty split file; expected one sample id per line",
    ),
    "id listed twice in val": (
        lambda r: (r / "splits" / "val.txt").write_text("1\n2\n1\n"),
        {},
        "splits/val.txt:3",
        "id '1' is listed twice (first on line 1); expected each id once",
    ),
    "id in train and test": (
        lambda r: (r / "splits" / "test.txt").write_text("2001\n0\n"),
        {},
        "splits/test.txt:2",
        "id '0' is also in {root}/splits/train.txt (line 1); a sample must be in one split only",
    ),
    "truncated test image": (
        lambda r: _truncate(r / "images" / "2001.png", keep=60),
        {},
        "images/2001.png",
        "corrupt or truncated image",
    ),
    "class id 5 in a 3-class map": (
        lambda r: _edit_label(r / "labels3" / "1.png", lambda a: np.where(a == 2, 5, a)),
        {},
        "labels3/1.png",
        "class id 5 out of range 0..2 (data.classes)",
    ),
    "3-class maps in labels19": (
        lambda r: [shutil.copy(p, r / "labels19" / p.name) for p in (r / "labels3").iterdir()],
        {"classes": 19},
        "labels19",
        "looks like a 3-class tree (ids 0..2) but it is read with 19 classes: no label file uses ids above 2; "
        "set data.classes=3",
    ),
    "sample without attributes": (
        lambda r: _drop_attributes(r, "2"),
        {},
        "attributes.json",
        "no attributes for sample 2",
    ),
}


@pytest.mark.parametrize("case", list(CELEBA_CASES))
def test_bad_celebamask_tree(celeba: Path, case: str) -> None:
    corrupt, overrides, file, problem = CELEBA_CASES[case]
    corrupt(celeba)
    message = _fails(_celeba_cfg(celeba, **overrides), ["segmentation", "male"])
    assert message.startswith(f"{celeba / file}: ") and problem.format(root=celeba) in message


def test_clean_celebamask_tree(celeba: Path) -> None:
    report = check_data(_celeba_cfg(celeba), ["segmentation", "male"])
    assert {n: (s.samples, s.files) for n, s in report.splits.items()} == {
        "train": (1, 3),
        "val": (2, 6),
        "test": (1, 3),
    }


# ---------------------------------------------------------------- real sample files


def _drsleep(frame: int, kind: str) -> Path:
    folder = "ExpNYUD_three" if frame == 433 else "ExpNYUD_joint"
    return NYU_SAMPLES / "drsleep-multitask" / folder / f"{kind}{frame:06d}.png"


@pytest.fixture
def real_tree(tmp_path: Path) -> Path:
    """Frames 433 and 464 (DrSleep RGB + seg40, raw uint16 depth in units of 1/5000 m) as a NYUD-MT test split."""
    if not NYU_SAMPLES.is_dir():
        pytest.skip(f"real NYU-v2 samples not available at {NYU_SAMPLES}")
    root = tmp_path / "real"
    for name in ("images", "segmentation", "depth", "gt_sets"):
        (root / name).mkdir(parents=True)
    for frame in (433, 464):
        shutil.copy(_drsleep(frame, ""), root / "images" / f"{frame}.png")
        seg = np.asarray(Image.open(_drsleep(frame, "segm_gt_"))).astype(np.int64)
        Image.fromarray(np.where(seg == 255, 0, seg + 1).astype(np.uint8)).save(root / "segmentation" / f"{frame}.png")
        np.save(root / "depth" / f"{frame}.npy", np.asarray(Image.open(_drsleep(frame, "depth_gt_"))).astype(np.uint16))
    (root / "gt_sets" / "train.txt").write_text("0001\n")
    (root / "gt_sets" / "val.txt").write_text("433\n464\n")
    return root


def test_real_frames_need_drsleeps_depth_coefficient(real_tree: Path) -> None:
    tasks = ("segmentation", "depth")
    message = _fails(_cfg(real_tree), tasks, splits=("test",))
    assert message.startswith(f"{real_tree / 'depth' / '433.npy'}: median depth 1.82e+04 (after data.depth_scale=1)")
    report = check_data(_cfg(real_tree, depth_scale=1 / 5000), tasks, splits=("test",))
    assert report.ok and report.splits["test"].files == 6
    depth = build_dataset(_cfg(real_tree, depth_scale=1 / 5000), "test", tasks)[0]["depth"]
    assert float(depth[depth > 0].median()) == pytest.approx(3.6404, abs=1e-3)  # 433: median of raw 18202 / 5000


def test_real_13_class_labels_read_with_40_classes(real_tree: Path) -> None:
    for frame in (433, 464):
        path = NYU_SAMPLES / "ankurhanda-class13" / "test" / f"new_nyu_class13_{frame:04d}.png"
        shutil.copy(path, real_tree / "segmentation" / f"{frame}.png")
    cfg = _cfg(real_tree, depth_scale=1 / 5000)
    message = _fails(cfg, ("segmentation",), splits=("test",))
    assert message == (
        f"{real_tree / 'segmentation'}: looks like a 13-class tree (ids 0..13, 0 = void) but it is read with 40 "
        "classes: no label file uses ids above 13; set data.classes=13"
    )
    assert check_data(_cfg(real_tree, classes=13), ("segmentation",), splits=("test",)).ok


def test_real_normals_png_pass_the_unit_check(real_tree: Path) -> None:
    (real_tree / "normals").mkdir()
    shutil.copy(_drsleep(433, "norm_gt_"), real_tree / "normals" / "433.png")
    (real_tree / "gt_sets" / "val.txt").write_text("433\n")
    assert check_data(_cfg(real_tree), ("normals",), splits=("test",)).ok


@pytest.mark.skipif(not CELEBA.is_dir(), reason="shared CelebAMask-HQ samples absent")
def test_real_jpeg_truncation_needs_a_decode(tmp_path: Path) -> None:
    real = CELEBA / "CelebAMask-HQ" / "CelebA-HQ-img" / "0.jpg"
    assert verify_image(real) == (1024, 1024)
    cut = tmp_path / "0.jpg"
    cut.write_bytes(real.read_bytes()[:-1000])
    with Image.open(cut) as img:
        img.verify()  # PIL's verify() does not see a truncated JPEG
    with pytest.raises(DataError, match=rf"^{cut}: corrupt or truncated image \(image file is truncated"):
        verify_image(cut)
