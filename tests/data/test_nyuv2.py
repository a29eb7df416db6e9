"""Tests of the NYU-v2 loader: both layouts on tiny generated trees, bad data, and the real sample files.

The real files (licensed, never copied into the repo) are read from ``../shared`` next to the repo
and turned into a NYUD-MT tree under ``tmp_path`` at test time; those tests skip when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsemtl.config import ConfigError, DataConfig
from sparsemtl.data.nyuv2 import CLASS_NAMES_13, CLASS_NAMES_40, LABELS13, DataError, NYUv2, build_nyuv2
from sparsemtl.tasks.spec import IGNORE_INDEX

SIZE = (24, 32)
SHARED = Path(__file__).resolve().parents[2].parent / "shared"
NYU_SAMPLES = SHARED / "sample-data" / "nyuv2"


def _unit_normals(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    normals = rng.normal(size=(*size, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    normals[:2] = 0.0  # invalid rows
    return normals


def make_nyud(root: Path, train: list[str], val: list[str], size=SIZE, seed: int = 0) -> Path:
    """A NYUD-MT tree: raw labels 0..40 (0 = void), depth with zero holes, normals with zero rows."""
    rng = np.random.default_rng(seed)
    for name in ("images", "segmentation", "depth", "normals", "gt_sets"):
        (root / name).mkdir(parents=True, exist_ok=True)
    for sample_id in train + val:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "images" / f"{sample_id}.png")
        Image.fromarray(rng.integers(0, 41, size, dtype=np.uint8)).save(root / "segmentation" / f"{sample_id}.png")
        depth = rng.uniform(0.5, 8.0, size).astype(np.float32)
        depth[:, :3] = 0.0
        np.save(root / "depth" / f"{sample_id}.npy", depth)
        np.save(root / "normals" / f"{sample_id}.npy", _unit_normals(rng, size))
    (root / "gt_sets" / "train.txt").write_text("".join(f"{s}\n" for s in train))
    (root / "gt_sets" / "val.txt").write_text("".join(f"{s}\n" for s in val))
    return root


def make_mtan(root: Path, num_train: int, num_val: int, size=SIZE, seed: int = 0) -> Path:
    """A MTAN tree: float images in [0,1], labels in {-1, 0..12}, depth (H,W,1), normals (H,W,3)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("val", num_val)):
        for folder in ("image", "label", "depth", "normal"):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            np.save(root / split / "image" / f"{i}.npy", rng.integers(0, 256, (*size, 3)) / 255.0)
            np.save(root / split / "label" / f"{i}.npy", rng.integers(-1, 13, size).astype(np.float32))
            depth = rng.uniform(0.5, 8.0, (*size, 1)).astype(np.float32)
            depth[:4] = 0.0
            np.save(root / split / "depth" / f"{i}.npy", depth)
            np.save(root / split / "normal" / f"{i}.npy", _unit_normals(rng, size))
    return root


IDS = [f"img_{5001 + i}" for i in range(10)]
TEST_IDS = ["img_6001", "img_6002", "img_6003"]


@pytest.fixture()
def nyud(tmp_path: Path) -> Path:
    return make_nyud(tmp_path / "nyud", IDS, TEST_IDS)


@pytest.fixture()
def mtan(tmp_path: Path) -> Path:
    return make_mtan(tmp_path / "mtan", 10, 3)


def _check_format(sample: dict[str, torch.Tensor], size=SIZE) -> None:
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, *size)
    assert 0.0 <= sample["image"].min() and sample["image"].max() <= 1.0
    assert sample["segmentation"].dtype == torch.int64 and sample["segmentation"].shape == size
    assert sample["depth"].dtype == torch.float32 and sample["depth"].shape == (1, *size)
    assert sample["normals"].dtype == torch.float32 and sample["normals"].shape == (3, *size)
    norms = sample["normals"].norm(dim=0)
    assert torch.all((norms == 0) | ((norms - 1).abs() < 1e-5))


def test_nyud_mt_sample_matches_files(nyud: Path) -> None:
    dataset = NYUv2(nyud, "test")
    assert dataset.layout == "nyud-mt" and dataset.sample_ids == TEST_IDS
    sample = dataset[0]
    _check_format(sample)
    raw = np.asarray(Image.open(nyud / "segmentation" / "img_6001.png")).astype(np.int64)
    seg = sample["segmentation"].numpy()
    assert np.array_equal(seg[raw == 0], np.full((raw == 0).sum(), IGNORE_INDEX))
    assert np.array_equal(seg[raw > 0], raw[raw > 0] - 1) and seg[raw > 0].max() <= 39
    image = np.asarray(Image.open(nyud / "images" / "img_6001.png")).astype(np.float32) / 255
    assert np.allclose(sample["image"].numpy().transpose(1, 2, 0), image)
    depth = np.load(nyud / "depth" / "img_6001.npy")
    assert np.array_equal(sample["depth"][0].numpy(), depth) and (sample["depth"][0, :, :3] == 0).all()
    assert (sample["normals"][:, :2] == 0).all()
    assert np.allclose(sample["normals"].numpy().transpose(1, 2, 0), np.load(nyud / "normals" / "img_6001.npy"))
    spec = dataset.task_specs["segmentation"]
    assert spec.num_classes == 40 and spec.class_names == CLASS_NAMES_40
    assert list(dataset.task_specs) == ["segmentation", "depth", "normals"]


def test_nyud_mt_png_normals_and_jpg_images(tmp_path: Path) -> None:
    root = make_nyud(tmp_path, ["a", "b"], ["c"])
    normals = np.load(root / "normals" / "c.npy")
    Image.fromarray(np.round((normals + 1) * 127.5).astype(np.uint8)).save(root / "normals" / "c.png")
    (root / "normals" / "c.npy").unlink()
    Image.open(root / "images" / "c.png").save(root / "images" / "c.jpg", quality=95)
    (root / "images" / "c.png").unlink()
    sample = NYUv2(root, "test")[0]
    _check_format(sample)
    decoded = sample["normals"].numpy().transpose(1, 2, 0)
    assert (decoded[:2] == 0).all(), "grey (127/128) fill must decode to invalid"
    assert np.abs(decoded[2:] - normals[2:]).max() < 0.02


def test_mtan_sample_matches_files(mtan: Path) -> None:
    dataset = NYUv2(mtan, "test")
    assert dataset.layout == "mtan" and dataset.sample_ids == ["0", "1", "2"]
    sample = dataset[1]
    _check_format(sample)
    raw = np.load(mtan / "val" / "label" / "1.npy")
    seg = sample["segmentation"].numpy()
    assert (seg[raw == -1] == IGNORE_INDEX).all() and np.array_equal(seg[raw >= 0], raw[raw >= 0].astype(np.int64))
    assert np.allclose(sample["image"].numpy().transpose(1, 2, 0), np.load(mtan / "val" / "image" / "1.npy"))
    assert np.array_equal(sample["depth"].numpy(), np.load(mtan / "val" / "depth" / "1.npy").transpose(2, 0, 1))
    assert (sample["depth"][0, :4] == 0).all() and (sample["normals"][:, :2] == 0).all()
    spec = dataset.task_specs["segmentation"]
    assert spec.num_classes == 13 and spec.class_names == CLASS_NAMES_13


@pytest.mark.parametrize("layout", ["nyud-mt", "mtan"])
def test_validation_carved_from_train(tmp_path: Path, layout: str) -> None:
    root = make_nyud(tmp_path, IDS, TEST_IDS) if layout == "nyud-mt" else make_mtan(tmp_path, 10, 3)
    official = IDS if layout == "nyud-mt" else [str(i) for i in range(10)]
    train, val = (NYUv2(root, s, val_fraction=0.2, seed=3) for s in ("train", "val"))
    assert len(train) == 8 and len(val) == 2 and len(NYUv2(root, "test")) == 3
    assert not set(train.sample_ids) & set(val.sample_ids)
    assert sorted(train.sample_ids + val.sample_ids) == sorted(official)
    assert NYUv2(root, "val", val_fraction=0.2, seed=3).sample_ids == val.sample_ids
    others = {tuple(NYUv2(root, "val", val_fraction=0.2, seed=s).sample_ids) for s in range(6)}
    assert len(others) > 1, "the seed must change the carved ids"


def test_layout_detection_and_missing_files_message(tmp_path: Path, nyud: Path, mtan: Path) -> None:
    assert NYUv2(nyud, "test", layout="auto").layout == "nyud-mt"
    assert NYUv2(mtan, "test", layout="mtan").layout == "mtan"
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        NYUv2(tmp_path / "empty", "train")
    assert str(err.value) == (
        f"NYU-v2 root '{tmp_path / 'empty'}': no supported layout: NYUD-MT needs images/ and gt_sets/train.txt "
        "(missing: gt_sets/train.txt); MTAN needs train/image/*.npy (missing: train/image/*.npy)"
    )
    with pytest.raises(DataError, match=r"no supported layout: MTAN needs train/image/\*\.npy \(missing"):
        NYUv2(nyud, "train", layout="mtan")


def test_only_requested_task_files_are_needed(nyud: Path) -> None:
    for folder in ("depth", "normals"):
        for path in (nyud / folder).iterdir():
            path.unlink()
    dataset = NYUv2(nyud, "test", tasks=("segmentation",))
    assert set(dataset[0]) == {"image", "segmentation"} and list(dataset.task_specs) == ["segmentation"]
    with pytest.raises(DataError, match="missing depth label file"):
        NYUv2(nyud, "test")[0]


def test_resize_keeps_invalid_pixels_invalid(nyud: Path) -> None:
    sample = NYUv2(nyud, "test", image_size=(16, 20))[0]
    _check_format(sample, (16, 20))
    assert (sample["segmentation"] == IGNORE_INDEX).any() and sample["segmentation"].max() == IGNORE_INDEX
    assert set(sample["segmentation"].unique().tolist()) <= set(range(40)) | {IGNORE_INDEX}
    assert (sample["depth"][0, :, :1] == 0).all() and (sample["normals"][:, :1] == 0).all()


def test_mixed_native_sizes_need_resize(tmp_path: Path) -> None:
    root = make_nyud(tmp_path, ["a", "b"], ["c", "d"])
    make_nyud(tmp_path / "other", [], ["d"], size=(20, 30))
    for folder, ext in (("images", ".png"), ("segmentation", ".png"), ("depth", ".npy"), ("normals", ".npy")):
        (tmp_path / "other" / folder / f"d{ext}").replace(root / folder / f"d{ext}")
    dataset = NYUv2(root, "test")
    with pytest.raises(DataError, match=r"d\.png: size 20x30 differs from the split's 24x32"):
        dataset[1]
    assert NYUv2(root, "test", image_size=(24, 32))[1]["image"].shape == (3, 24, 32)


def _truncate_image(root: Path) -> None:
    path = root / "images" / "c.png"
    path.write_bytes(path.read_bytes()[:200])


def _drop_label(root: Path) -> None:
    (root / "segmentation" / "c.png").unlink()


def _small_depth(root: Path) -> None:
    np.save(root / "depth" / "c.npy", np.ones((12, 32), np.float32))


def _class_41(root: Path) -> None:
    labels = np.asarray(Image.open(root / "segmentation" / "c.png")).copy()
    labels[3, 4] = 41
    Image.fromarray(labels).save(root / "segmentation" / "c.png")


def _nan_depth(root: Path) -> None:
    depth = np.load(root / "depth" / "c.npy")
    depth[5, 5] = np.nan
    np.save(root / "depth" / "c.npy", depth)


BAD_CASES = {
    "corrupt image": (_truncate_image, "images/c.png", "corrupt or truncated image"),
    "missing label": (_drop_label, "segmentation/c.png", "missing segmentation label file"),
    "size mismatch": (_small_depth, "depth/c.npy", "depth is 12x32 but its image is 24x32"),
    "class out of range": (_class_41, "segmentation/c.png", "class id 41 out of range"),
    "nan depth": (_nan_depth, "depth/c.npy", "depth contains NaN or inf"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_sample_raises_one_line_naming_file(tmp_path: Path, case: str) -> None:
    corrupt, file, problem = BAD_CASES[case]
    root = make_nyud(tmp_path, ["a", "d"], ["b", "c"])
    corrupt(root)
    dataset = NYUv2(root, "test")
    dataset[0]
    with pytest.raises(DataError) as err:
        dataset[1]
    message = str(err.value)
    assert "\n" not in message and str(root / file) in message and problem in message


def test_mtan_bad_label_and_non_contiguous_indices(mtan: Path) -> None:
    np.save(mtan / "val" / "label" / "2.npy", np.full(SIZE, 13.0, np.float32))
    with pytest.raises(DataError, match=r"val/label/2\.npy: class id 13 out of range; expected integers -1\.\.12"):
        NYUv2(mtan, "test")[2]
    (mtan / "val" / "image" / "1.npy").unlink()
    with pytest.raises(DataError, match=r"val/image/1\.npy: missing; MTAN indices must be contiguous from 0"):
        NYUv2(mtan, "test")


def test_empty_split_file_fails_at_construction(nyud: Path) -> None:
    (nyud / "gt_sets" / "val.txt").write_text("\n")
    with pytest.raises(DataError, match=r"gt_sets/val\.txt: empty split file"):
        NYUv2(nyud, "test")


def test_skip_bad_samples_drops_and_counts(tmp_path: Path) -> None:
    root = make_nyud(tmp_path, ["e", "f"], ["a", "b", "c", "d"])
    _truncate_image(root)
    np.save(root / "depth" / "a.npy", np.full(SIZE, np.inf, np.float32))
    with pytest.warns(UserWarning, match=r"NYU-v2 test: skipped 2 bad sample\(s\) of 4"):
        dataset = NYUv2(root, "test", skip_bad_samples=True)
    assert dataset.sample_ids == ["b", "d"] and [s for s, _ in dataset.skipped] == ["a", "c"]
    assert "NaN or inf" in dataset.skipped[0][1] and "corrupt" in dataset.skipped[1][1]
    _check_format(dataset[1])


def test_builder_uses_data_config(nyud: Path) -> None:
    cfg = DataConfig(name="nyuv2", root=str(nyud), val_fraction=0.3, seed=1, resize=True, image_size=(16, 16))
    train, val = build_nyuv2(cfg, "train"), build_nyuv2(cfg, "val")
    assert (len(train), len(val)) == (7, 3) and train[0]["image"].shape == (3, 16, 16)


# ---------------------------------------------------------------- real NYU-v2 sample files


def _drsleep(frame: int, kind: str) -> Path:
    folder = "ExpNYUD_three" if frame == 433 else "ExpNYUD_joint"
    return NYU_SAMPLES / "drsleep-multitask" / folder / f"{kind}{frame:06d}.png"


@pytest.fixture(scope="module")
def real_nyud(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Frames 433 and 464 of DrSleep's multi-task files, rewritten in NYUD-MT conventions."""
    if not NYU_SAMPLES.is_dir():
        pytest.skip(f"real NYU-v2 samples not available at {NYU_SAMPLES}")
    root = tmp_path_factory.mktemp("real_nyud")
    for name in ("images", "segmentation", "depth", "normals", "gt_sets"):
        (root / name).mkdir()
    for frame in (433, 464):
        Image.open(_drsleep(frame, "")).convert("RGB").save(root / "images" / f"{frame}.png")
        seg = np.asarray(Image.open(_drsleep(frame, "segm_gt_"))).astype(np.int64)
        Image.fromarray(np.where(seg == 255, 0, seg + 1).astype(np.uint8)).save(root / "segmentation" / f"{frame}.png")
        depth = np.asarray(Image.open(_drsleep(frame, "depth_gt_"))).astype(np.float32) / 5000.0
        np.save(root / "depth" / f"{frame}.npy", depth)
    rgb = np.asarray(Image.open(_drsleep(433, "norm_gt_")).convert("RGB"))
    normals = rgb.astype(np.float32) * (2 / 255) - 1
    normals[(rgb == 127).all(axis=-1)] = 0.0
    np.save(root / "normals" / "433.npy", normals)
    (root / "gt_sets" / "train.txt").write_text("0001\n0002\n")  # official train frames, not copied
    (root / "gt_sets" / "val.txt").write_text("433\n464\n")
    return root


def test_real_frames_values_match_sources(real_nyud: Path) -> None:
    dataset = NYUv2(real_nyud, "test", tasks=("segmentation", "depth"))
    for sample in (dataset[0], dataset[1]):
        assert sample["image"].shape == (3, 480, 640)
        seg = sample["segmentation"]
        assert set(seg.unique().tolist()) <= set(range(40)) | {IGNORE_INDEX} and (seg == IGNORE_INDEX).any()
        depth = sample["depth"][0]
        valid = depth[depth > 0]
        assert 1.495 <= valid.min() and valid.max() <= 5.935, "SOURCES.md: valid depth runs 1.50-5.93 m (2 d.p.)"
        assert 0.335 <= (depth == 0).double().mean().item() <= 0.375, "SOURCES.md: 34-37% of pixels have no depth"


def test_real_frame_normals_and_missing_normals_skipped(real_nyud: Path) -> None:
    with pytest.warns(UserWarning, match="skipped 1 bad sample"):
        dataset = NYUv2(real_nyud, "test", skip_bad_samples=True)
    assert dataset.sample_ids == ["433"] and "464.npy or" in dataset.skipped[0][1]
    normals = dataset[0]["normals"]
    invalid = (normals == 0).all(dim=0).float().mean()
    assert 0.2 <= invalid <= 0.24, "SOURCES.md: about 22% of normals are invalid"


def test_real_labels13_mapping_matches_ankurhanda(real_nyud: Path) -> None:
    from scipy.io import loadmat

    meta = loadmat(NYU_SAMPLES / "official-meta" / "class13Mapping.mat", squeeze_me=True, struct_as_record=False)
    mapping = meta["classMapping13"]
    assert tuple(mapping.labels13.tolist()) == LABELS13 and tuple(mapping.classNames) == CLASS_NAMES_13
    names40 = loadmat(NYU_SAMPLES / "official-meta" / "classMapping40.mat", squeeze_me=True)["className"]
    assert tuple(names40) == CLASS_NAMES_40
    lookup = np.array([0, *LABELS13])
    dataset = NYUv2(real_nyud, "test", tasks=("segmentation",))
    for index, frame in enumerate(dataset.sample_ids):
        seg = dataset[index]["segmentation"].numpy()
        labels13 = lookup[np.where(seg == IGNORE_INDEX, 0, seg + 1)]
        reference = np.asarray(
            Image.open(NYU_SAMPLES / "ankurhanda-class13" / "test" / f"new_nyu_class13_{frame:0>4}.png")
        )
        assert np.array_equal(labels13, reference)


def test_builder_resizes_evaluation_images_only_so_metrics_use_label_resolution(nyud: Path) -> None:
    cfg = DataConfig(name="nyuv2", root=str(nyud), resize=True, image_size=(16, 16))
    train, test = build_nyuv2(cfg, "train")[0], build_nyuv2(cfg, "test")[0]
    assert train["image"].shape[-2:] == train["depth"].shape[-2:] == (16, 16)
    assert test["image"].shape[-2:] == (16, 16)
    assert test["segmentation"].shape == SIZE and test["depth"].shape[-2:] == SIZE


# ---------------------------------------------------------------- split lists, depth scale, class count (loader)


def _one_line_error(build) -> str:
    with pytest.raises(DataError) as err:
        build()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_split_list_errors_fail_at_construction(tmp_path: Path) -> None:
    root = make_nyud(tmp_path, ["a", "b", "c"], ["d"])
    (root / "gt_sets" / "train.txt").write_text("a\nb\n\na\nc\n")
    message = _one_line_error(lambda: NYUv2(root, "val"))
    assert (
        message
        == f"{root / 'gt_sets' / 'train.txt'}:4: id 'a' is listed twice (first on line 1); expected each id once"
    )
    (root / "gt_sets" / "train.txt").write_text("a\nb\nc\n")
    (root / "gt_sets" / "val.txt").write_text("d\nb\n")
    message = _one_line_error(lambda: NYUv2(root, "train"))
    assert message == (
        f"{root / 'gt_sets' / 'val.txt'}:2: id 'b' is also in {root / 'gt_sets' / 'train.txt'} (line 2); "
        "a sample must be in one split only"
    )
    (root / "gt_sets" / "val.txt").write_text("d\n")
    (root / "gt_sets" / "train.txt").write_text("a\n")
    message = _one_line_error(lambda: NYUv2(root, "train"))
    assert message == (
        f"{root / 'gt_sets' / 'train.txt'}: cannot carve a validation split (data.val_fraction) out of "
        "1 training sample(s); expected at least 2"
    )


def test_loader_applies_depth_scale(tmp_path: Path) -> None:
    root = make_nyud(tmp_path, ["a", "b"], ["c"])
    stored = np.zeros(SIZE, np.uint16)
    stored[2, 3], stored[4, 5] = 1500, 65535  # millimetres as uint16, like many extractions
    np.save(root / "depth" / "c.npy", stored)
    depth = NYUv2(root, "test", depth_scale=0.001)[0]["depth"][0]
    assert depth[2, 3].item() == pytest.approx(1.5) and depth[4, 5].item() == pytest.approx(65.535)
    assert int((depth > 0).sum()) == 2
    cfg = DataConfig(name="nyuv2", root=str(root), depth_scale=0.001)
    assert build_nyuv2(cfg, "test")[0]["depth"][0, 2, 3].item() == pytest.approx(1.5)
    with pytest.raises(ConfigError, match=r"^config key 'data.depth_scale': expected metres per stored unit > 0"):
        NYUv2(root, "test", depth_scale=0.0)


def test_mtan_tree_read_with_40_classes(mtan: Path) -> None:
    message = _one_line_error(lambda: NYUv2(mtan, "test", classes=40))
    assert message == (
        f"{mtan}: an MTAN tree has 13 classes (label ids -1..12) but data.classes is 40; set data.classes=13 or 0"
    )
    assert NYUv2(mtan, "test", classes=13).task_specs["segmentation"].num_classes == 13


def test_skip_bad_samples_with_no_good_sample_left(tmp_path: Path) -> None:
    root = make_nyud(tmp_path, ["a", "b"], ["c", "d"])
    for sample_id in ("c", "d"):
        (root / "depth" / f"{sample_id}.npy").unlink()
    message = _one_line_error(lambda: NYUv2(root, "test", skip_bad_samples=True))
    assert message == f"NYU-v2 test: all 2 samples are bad; first: {root / 'depth' / 'c.npy'}: missing depth label file"
