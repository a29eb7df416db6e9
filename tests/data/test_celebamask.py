"""Tests of CelebAMask-HQ preparation and loading: a tiny generated release, bad data, and the real samples.

The real files (licensed, never copied into the repo) are read from ``../shared`` next to the repo;
those tests skip when it is absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsemtl.config import ConfigError, DataConfig
from sparsemtl.data.celebamask import (
    ATTRIBUTE_NAMES,
    CLASS_NAMES_19,
    PARTS,
    THREE_CLASS_MAPPING,
    CelebAMaskHQ,
    DataError,
    build_celebamask,
    merge_parts,
    partition_of,
    prepare_celebamask,
    read_attributes,
    read_mapping,
    read_partition,
    remap,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CELEBA = SHARED / "sample-data" / "celebamask-hq"
M = 16  # mask side in the fake release (the real one is 512)
IDS = (0, 1, 2, 2001)  # 2001 lives in mask folder 1
ORIG = {0: 5, 1: 162770, 2: 162771, 2001: 182637}  # 0-based orig_idx: train, val, val, test
CID = {name: i for i, name in enumerate(CLASS_NAMES_19)}


def _attr_values(idx: int) -> list[int]:
    return [1 if (idx + j) % 3 == 0 else -1 for j in range(len(ATTRIBUTE_NAMES))]


def _part(raw: Path, idx: int, part: str, box: tuple[int, int, int, int]) -> None:
    mask = np.zeros((M, M, 3), np.uint8)  # RGB 0/255, as the release probably stores them
    r0, r1, c0, c1 = box
    mask[r0:r1, c0:c1] = 255
    folder = raw / "CelebAMask-HQ-mask-anno" / str(idx // 2000)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(folder / f"{idx:05d}_{part}.png")


def make_release(raw: Path, header: bool = True, parts: bool = True) -> Path:
    rng = np.random.default_rng(0)
    (raw / "CelebA-HQ-img").mkdir(parents=True)
    for idx in IDS:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(raw / "CelebA-HQ-img" / f"{idx}.jpg")
        if parts:
            _part(raw, idx, "skin", (2, 14, 2, 14))
            _part(raw, idx, "nose", (6, 8, 6, 8))
            _part(raw, idx, "hair", (0, 4, 0, 16))  # overwrites skin rows 2..3
            _part(raw, idx, "eye_g", (4, 6, 2, 14))
            _part(raw, idx, "l_eye", (4, 6, 3, 5))  # painted after eye_g
            _part(raw, idx, "cloth", (12, 16, 0, 16))  # last: overwrites skin rows 12..13
            # no hat / neck / ... files: empty parts
    rows = [f"{idx}.jpg  " + " ".join(str(v) for v in _attr_values(idx)) for idx in IDS]
    (raw / "CelebAMask-HQ-attribute-anno.txt").write_text(
        f"{len(IDS)}\n{' '.join(ATTRIBUTE_NAMES)}\n" + "\n".join(rows) + "\n"
    )
    lines = ["idx        orig_idx   orig_file"] if header else []
    lines += [f"{i:<11}{o:<11}{o + 1:06d}.jpg" for i, o in ORIG.items()]
    (raw / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(lines) + "\n")
    return raw


def expected_19() -> np.ndarray:
    lab = np.zeros((M, M), np.uint8)
    lab[2:14, 2:14] = CID["skin"]
    lab[6:8, 6:8] = CID["nose"]
    lab[4:6, 2:14] = CID["eye_g"]
    lab[4:6, 3:5] = CID["l_eye"]
    lab[0:4, :] = CID["hair"]
    lab[12:16, :] = CID["cloth"]
    return lab


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


# ---------------------------------------------------------------- preparation


def test_merge_order_and_missing_parts(tmp_path):
    raw = make_release(tmp_path / "raw")
    for idx in IDS:
        np.testing.assert_array_equal(merge_parts(raw / "CelebAMask-HQ-mask-anno", idx), expected_19())


def test_three_class_mapping_is_complete_and_documented():
    assert set(THREE_CLASS_MAPPING) == set(range(19))
    hair = {CLASS_NAMES_19[k] for k, v in THREE_CLASS_MAPPING.items() if v == 1}
    background = {CLASS_NAMES_19[k] for k, v in THREE_CLASS_MAPPING.items() if v == 0}
    assert hair == {"hair"}
    assert background == {"background", "hat", "cloth"}
    assert len(PARTS) == 18


@pytest.mark.parametrize("header", [True, False])
def test_prepare_writes_everything(tmp_path, header):
    raw = make_release(tmp_path / "raw", header=header)
    out = tmp_path / "out"
    counts = prepare_celebamask(raw, out, size=8)
    assert counts == {"train": 1, "val": 2, "test": 1, "total": 4}
    assert (out / "splits" / "train.txt").read_text().split() == ["0"]
    assert (out / "splits" / "val.txt").read_text().split() == ["1", "2"]
    assert (out / "splits" / "test.txt").read_text().split() == ["2001"]
    with Image.open(out / "images" / "2001.png") as img:
        assert img.size == (8, 8) and img.mode == "RGB"
    lab19 = _png(out / "labels19" / "0.png")
    want19 = np.asarray(Image.fromarray(expected_19()).resize((8, 8), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(lab19, want19)
    np.testing.assert_array_equal(_png(out / "labels3" / "0.png"), remap(want19))
    assert set(np.unique(_png(out / "labels3" / "0.png"))) == {0, 1, 2}
    table = json.loads((out / "attributes.json").read_text())
    assert table["names"] == list(ATTRIBUTE_NAMES)
    assert table["values"]["2001"] == [int(v == 1) for v in _attr_values(2001)]


def test_partition_file_and_limit(tmp_path):
    raw = make_release(tmp_path / "raw")
    part = tmp_path / "list_eval_partition.txt"
    part.write_text("".join(f"{o + 1:06d}.jpg {p}\n" for o, p in zip(ORIG.values(), (2, 0, 1, 0))))
    counts = prepare_celebamask(raw, tmp_path / "out", size=8, partition_file=part, limit=3)
    assert counts == {"train": 1, "val": 1, "test": 1, "total": 3}
    assert (tmp_path / "out" / "splits" / "test.txt").read_text().split() == ["0"]


def test_prepare_warns_about_empty_splits(tmp_path):
    raw = make_release(tmp_path / "raw")
    with pytest.warns(UserWarning) as caught:
        counts = prepare_celebamask(raw, tmp_path / "out", size=8, limit=1)
    assert counts == {"train": 1, "val": 0, "test": 0, "total": 1}
    assert [str(w.message).split(": ")[0] for w in caught] == [
        str(tmp_path / "out" / "splits" / "val.txt"),
        str(tmp_path / "out" / "splits" / "test.txt"),
    ]


def test_fallback_boundaries_follow_celeba_file_numbers():
    # CelebA file 162770.jpg (orig_idx 162769) is the last train file, 182638.jpg the first test file.
    assert [partition_of(i) for i in (0, 162769, 162770, 182636, 182637)] == [0, 0, 1, 1, 2]


def test_merged_maps_and_custom_mapping(tmp_path):
    raw = make_release(tmp_path / "raw", parts=False)
    (raw / "CelebAMask-HQ-mask").mkdir()
    for idx in IDS:
        Image.fromarray(expected_19()).save(raw / "CelebAMask-HQ-mask" / f"{idx}.png")
    mapping = {**THREE_CLASS_MAPPING, CID["cloth"]: 2}
    prepare_celebamask(raw, tmp_path / "out", size=M, mapping=mapping)
    lab3 = _png(tmp_path / "out" / "labels3" / "1.png")
    assert (lab3[14:] == 2).all()
    np.testing.assert_array_equal(_png(tmp_path / "out" / "labels19" / "1.png"), expected_19())


def test_errors(tmp_path):
    with pytest.raises(DataError, match="missing CelebAMask-HQ folder"):
        prepare_celebamask(tmp_path / "nope", tmp_path / "out", size=8)
    raw = make_release(tmp_path / "raw", parts=False)
    with pytest.raises(DataError, match="no labels"):
        prepare_celebamask(raw, tmp_path / "out", size=8)
    with pytest.raises(ConfigError, match="no target for 19-class id 18"):
        prepare_celebamask(raw, tmp_path / "out", size=8, mapping={k: 0 for k in range(18)})
    attr = raw / "CelebAMask-HQ-attribute-anno.txt"
    attr.write_text(attr.read_text() + "9.jpg  1 -1\n")
    with pytest.raises(DataError, match=r"attribute-anno.txt:7: 2 values, expected 40"):
        read_attributes(attr)
    attr.write_text(f"1\n{' '.join(ATTRIBUTE_NAMES)}\n0.jpg  " + " ".join(["0"] * 40) + "\n")
    with pytest.raises(DataError, match="attribute value '0'"):
        read_attributes(attr)
    (raw / "CelebA-HQ-to-CelebA-mapping.txt").write_text("0 12\n")
    with pytest.raises(DataError, match="mapping.txt:1: expected"):
        read_mapping(raw / "CelebA-HQ-to-CelebA-mapping.txt")
    with pytest.raises(DataError, match="no part mask found"):
        merge_parts(tmp_path / "empty", 3)


def test_missing_image_is_named(tmp_path):
    raw = make_release(tmp_path / "raw")
    (raw / "CelebA-HQ-img" / "1.jpg").unlink()
    with pytest.raises(DataError, match=r"1\.jpg: missing image file"):
        prepare_celebamask(raw, tmp_path / "out", size=8)


# ---------------------------------------------------------------- dataset


@pytest.fixture
def prepared(tmp_path) -> Path:
    prepare_celebamask(make_release(tmp_path / "raw"), tmp_path / "out", size=8)
    return tmp_path / "out"


def test_dataset_samples(prepared):
    ds = CelebAMaskHQ(prepared, "val", attributes=("Male", "smiling", "Arched_Eyebrows", "Eyeglasses"))
    assert len(ds) == 2 and ds.sample_ids == ["1", "2"]
    sample = ds[0]
    assert sample["image"].shape == (3, 8, 8) and sample["image"].dtype == torch.float32
    assert 0.0 <= sample["image"].min() and sample["image"].max() <= 1.0
    assert sample["segmentation"].dtype == torch.int64 and sample["segmentation"].max() <= 2
    row = _attr_values(1)
    for key, name in (("male", "Male"), ("smiling", "Smiling"), ("eyeglasses", "Eyeglasses")):
        assert sample[key].shape == () and sample[key].item() == float(row[ATTRIBUTE_NAMES.index(name)] == 1)
    specs = ds.task_specs
    assert specs["segmentation"].num_classes == 3 and specs["arched_eyebrows"].kind == "attribute"


def test_dataset_19_classes_resize_and_builder(prepared):
    ds = CelebAMaskHQ(prepared, "train", classes=19, image_size=(4, 6))
    sample = ds[0]
    assert sample["image"].shape == (3, 4, 6) and sample["segmentation"].shape == (4, 6)
    assert ds.task_specs["segmentation"].class_names == CLASS_NAMES_19
    built = build_celebamask(DataConfig(name="celebamask", root=str(prepared)), "test")
    assert set(built[0]) == {"image", "segmentation"} | {name.lower() for name in ATTRIBUTE_NAMES}  # all 40
    with pytest.raises(ConfigError, match="data.root"):
        build_celebamask(DataConfig(name="celebamask"), "test")


def test_dataset_errors(prepared):
    with pytest.raises(ConfigError, match="no attribute 'Bearded'"):
        CelebAMaskHQ(prepared, "train", attributes=("Bearded",))
    with pytest.raises(DataError, match="missing split file"):
        CelebAMaskHQ(prepared.parent / "absent", "train")
    (prepared / "labels3" / "2.png").unlink()
    ds = CelebAMaskHQ(prepared, "val")
    with pytest.raises(DataError, match=r"2\.png: missing label file"):
        ds[1]
    with pytest.warns(UserWarning, match="skipped 1 bad sample"):
        ds = CelebAMaskHQ(prepared, "val", skip_bad_samples=True)
    assert ds.sample_ids == ["1"] and ds.skipped[0][0] == "2"


# ---------------------------------------------------------------- real sample files


needs_shared = pytest.mark.skipif(not CELEBA.is_dir(), reason="shared CelebAMask-HQ samples absent")


@needs_shared
def test_real_attribute_and_mapping_files():
    names, values = read_attributes(CELEBA / "CelebAMask-HQ" / "CelebAMask-HQ-attribute-anno.txt")
    assert names == ATTRIBUTE_NAMES and sorted(values) == [0, 1]
    # SOURCES.md: image 0 is a smiling woman with brown wavy hair, mouth open; 1 is a smiling blonde woman.
    row0 = dict(zip(names, values[0]))
    assert (row0["Male"], row0["Smiling"], row0["Brown_Hair"], row0["Wavy_Hair"], row0["Mouth_Slightly_Open"]) == (
        0, 1, 1, 1, 1)  # fmt: skip
    row1 = dict(zip(names, values[1]))
    assert (row1["Male"], row1["Smiling"], row1["Blond_Hair"]) == (0, 1, 1)
    rows = read_mapping(CELEBA / "CelebAMask-HQ" / "CelebA-HQ-to-CelebA-mapping.txt")
    assert sorted(rows) == list(range(50))
    assert rows[0] == (119613, "119614.jpg") and rows[1] == (99094, "099095.jpg")
    assert all(f == f"{o + 1:06d}.jpg" for o, f in rows.values())


@needs_shared
@pytest.mark.parametrize("k", range(4))
def test_real_merged_maps_to_three_classes(k):
    label = _png(CELEBA / "maskgan-demo-samples" / f"{k}.png")
    assert label.shape == (512, 512) and label.max() <= 18
    # official order by location: nose central, hair reaching the top, neck below the face.
    rows, cols = np.nonzero(label == CID["nose"])
    assert abs(rows.mean() - 256) < 80 and abs(cols.mean() - 256) < 80
    assert np.nonzero(label == CID["hair"])[0].min() < rows.mean() < np.nonzero(label == CID["neck"])[0].mean()
    # l_eye (subject's left) sits on the image right.
    assert np.nonzero(label == CID["l_eye"])[1].mean() > np.nonzero(label == CID["r_eye"])[1].mean()
    three = remap(label)
    assert set(np.unique(three)) == {0, 1, 2}
    assert (three[label == CID["hair"]] == 1).all() and (three[label == CID["nose"]] == 2).all()


@needs_shared
def test_real_release_end_to_end(tmp_path):
    """HQ images 0 and 1 with demo maps 0 and 1 as their (derived, mismatched) merged labels."""
    raw = tmp_path / "raw"
    (raw / "CelebA-HQ-img").mkdir(parents=True)
    (tmp_path / "merged").mkdir()
    for idx in (0, 1):
        shutil.copy(CELEBA / "CelebAMask-HQ" / "CelebA-HQ-img" / f"{idx}.jpg", raw / "CelebA-HQ-img")
        shutil.copy(CELEBA / "maskgan-demo-samples" / f"{idx}.png", tmp_path / "merged")
    for name in ("CelebAMask-HQ-attribute-anno.txt", "CelebA-HQ-to-CelebA-mapping.txt"):
        shutil.copy(CELEBA / "CelebAMask-HQ" / name, raw)
    with pytest.warns(UserWarning) as caught:
        counts = prepare_celebamask(raw, tmp_path / "out", size=64, merged=tmp_path / "merged")
    assert [str(w.message).split(": ")[1].split(";")[0] for w in caught] == [
        "no val sample among the 2 prepared images",
        "no test sample among the 2 prepared images",
    ]
    assert counts["total"] == 2  # orig_idx 119613 and 99094: both train
    assert counts["train"] == 2
    sample = CelebAMaskHQ(tmp_path / "out", "train")[0]
    assert sample["image"].shape == (3, 64, 64) and set(sample["segmentation"].unique().tolist()) == {0, 1, 2}
    assert sample["male"].item() == 0.0 and sample["smiling"].item() == 1.0


# ---------------------------------------------------------------- split lists and prepare inputs


def _error(build) -> str:
    with pytest.raises(DataError) as err:
        build()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_empty_val_or_test_split_fails_at_construction(prepared):
    """An empty split used to give NaN metrics and a 'best' epoch at loss 0."""
    for split in ("val", "test"):
        (prepared / "splits" / f"{split}.txt").write_text("")
        message = _error(lambda: CelebAMaskHQ(prepared, split))
        assert message == f"{prepared / 'splits' / f'{split}.txt'}: empty split file; expected one sample id per line"
    assert len(CelebAMaskHQ(prepared, "train")) == 1


def test_split_lists_must_be_disjoint_and_without_repeats(prepared):
    (prepared / "splits" / "val.txt").write_text("1\n2\n0\n")
    message = _error(lambda: CelebAMaskHQ(prepared, "test"))
    assert message == (
        f"{prepared / 'splits' / 'val.txt'}:3: id '0' is also in {prepared / 'splits' / 'train.txt'} (line 1); "
        "a sample must be in one split only"
    )
    (prepared / "splits" / "val.txt").write_text("1\n2\n2\n")
    assert _error(lambda: CelebAMaskHQ(prepared, "val")).endswith(
        "val.txt:3: id '2' is listed twice (first on line 2); expected each id once"
    )


def test_skip_bad_samples_that_would_empty_a_split(prepared):
    (prepared / "images" / "2001.png").write_bytes(b"\x89PNG\r\n")
    message = _error(lambda: CelebAMaskHQ(prepared, "test", skip_bad_samples=True))
    assert message.startswith(f"CelebAMask-HQ test: all 1 samples are bad; first: {prepared / 'images' / '2001.png'}: ")


def test_prepare_input_errors_name_the_file(tmp_path):
    raw = make_release(tmp_path / "raw")
    mapping = raw / "CelebA-HQ-to-CelebA-mapping.txt"
    lines = mapping.read_text().splitlines()
    mapping.write_text("\n".join([*lines, lines[1]]) + "\n")
    assert (
        _error(lambda: read_mapping(mapping)) == f"{mapping}:6: second row for HQ image 0; expected one row per image"
    )
    mapping.write_text("\n".join(lines) + "\n")
    part = tmp_path / "list_eval_partition.txt"
    part.write_text("000006.jpg 0\n")
    message = _error(lambda: prepare_celebamask(raw, tmp_path / "out", size=8, partition_file=part))
    assert message == f"{part}: no row for 162771.jpg (HQ image 1)"
    part.write_text("000006.jpg 0\n000006.jpg 2\n")
    assert _error(lambda: read_partition(part)) == f"{part}:2: second row for 000006.jpg; expected one row per image"
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / "images").write_text("a file where the images folder goes")
    message = _error(lambda: prepare_celebamask(raw, tmp_path / "blocked", size=8))
    assert message.startswith(f"{tmp_path / 'blocked' / 'images'}: cannot create the output folder (")
    with pytest.raises(ConfigError, match=r"^CelebAMask-HQ limit: expected a positive integer, got 0$"):
        prepare_celebamask(raw, tmp_path / "out", size=8, limit=0)
