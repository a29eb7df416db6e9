"""prepare_nyuv2: official labelled .mat (synthetic HDF5) + companion files -> NYUD-MT layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

h5py = pytest.importorskip("h5py")
scipy_io = pytest.importorskip("scipy.io")

from sparsemtl.data.nyuv2 import LABELS13, NYUv2  # noqa: E402
from sparsemtl.data.prepare_nyuv2 import (  # noqa: E402
    CROP_COLS,
    CROP_ROWS,
    DataError,
    load_class_mapping,
    load_splits,
    prepare_nyuv2,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
REAL_META = SHARED / "sample-data" / "nyuv2" / "official-meta"
N, H, W = 5, 8, 10
TRAIN, TEST = [1, 3, 5], [2, 4]
MAP40 = np.array([(k % 40) + 1 for k in range(894)], dtype=np.uint8)  # raw r -> ((r-1) % 40) + 1
MAP13 = np.array([(k % 13) + 1 for k in range(40)], dtype=np.uint8)  # 40-class c -> ((c-1) % 13) + 1


def _frames(n: int = N, h: int = H, w: int = W, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    depths = rng.uniform(0.7, 10.0, (n, h, w)).astype(np.float32)
    labels = rng.integers(0, 895, (n, h, w)).astype(np.uint16)
    labels[:, 0, 0] = 0  # void
    labels[:, 1, 2] = 894
    return images, depths, labels


def _write_labeled(path: Path, img, dep, lab, /, **override) -> Path:
    """Store (N,H,W,...) arrays the way MATLAB v7.3 does: column-major, W before H; ``override`` stores as given."""
    data = {"images": img.transpose(0, 3, 2, 1), "depths": dep.transpose(0, 2, 1), "labels": lab.transpose(0, 2, 1)}
    data.update(override)
    with h5py.File(path, "w") as f:
        for key, arr in data.items():
            if arr is not None:
                f.create_dataset(key, data=arr)
    return path


def _write_meta(folder: Path, train=TRAIN, test=TEST, map40=MAP40, map13=MAP13) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    col = lambda v: np.asarray(v, dtype=np.uint16).reshape(-1, 1)  # noqa: E731
    scipy_io.savemat(folder / "splits.mat", {"trainNdxs": col(train), "testNdxs": col(test)})
    scipy_io.savemat(folder / "classMapping40.mat", {"mapClass": np.asarray(map40).reshape(1, -1)})
    struct = {"labels13": np.asarray(map13).reshape(1, -1), "classNames": np.array(["x"], dtype=object)}
    scipy_io.savemat(folder / "class13Mapping.mat", {"classMapping13": struct})
    return folder


@pytest.fixture
def setup(tmp_path):
    frames = _frames()
    mat = _write_labeled(tmp_path / "labeled.mat", *frames)
    meta = _write_meta(tmp_path / "meta")
    return mat, meta, frames


def _l40(raw):
    return np.where(raw == 0, 0, (raw.astype(np.int64) - 1) % 40 + 1)


def _l13(raw):
    l40 = _l40(raw)
    return np.where(l40 == 0, 0, (l40 - 1) % 13 + 1)


def test_layout_transposes_and_40_classes(setup, tmp_path):
    mat, meta, (images, depths, labels) = setup
    out = tmp_path / "out"
    summary = prepare_nyuv2(mat, meta, out)
    assert summary == {
        "out": str(out), "train": 3, "val": 2, "classes": 40, "size": (H, W), "normals": False, "crop_border": False,
    }  # fmt: skip
    assert (out / "gt_sets" / "train.txt").read_text().split() == ["0001", "0003", "0005"]
    assert (out / "gt_sets" / "val.txt").read_text().split() == ["0002", "0004"]
    assert not (out / "normals").exists()
    for index in range(1, N + 1):
        fid, i = f"{index:04d}", index - 1
        img = np.asarray(Image.open(out / "images" / f"{fid}.png"))
        assert img.shape == (H, W, 3) and np.array_equal(img, images[i])
        seg = np.asarray(Image.open(out / "segmentation" / f"{fid}.png"))
        assert seg.dtype == np.uint8 and np.array_equal(seg, _l40(labels[i]))
        assert seg[0, 0] == 0 and seg[1, 2] == (894 - 1) % 40 + 1
        dep = np.load(out / "depth" / f"{fid}.npy")
        assert dep.dtype == np.float32 and dep.shape == (H, W) and np.array_equal(dep, depths[i])


def test_known_pixel_lands_at_row_col(tmp_path):
    images, depths, labels = (np.zeros_like(a) for a in _frames())
    images[2, 6, 9] = (11, 22, 33)  # frame 3, row 6, col 9 (H=8, W=10: asymmetric)
    depths[2, 6, 9] = 4.5
    labels[2, 6, 9] = 42  # -> 2 in 40 classes
    mat = _write_labeled(tmp_path / "l.mat", images, depths, labels)
    out = tmp_path / "out"
    prepare_nyuv2(mat, _write_meta(tmp_path / "meta"), out)
    img = np.asarray(Image.open(out / "images" / "0003.png"))
    seg = np.asarray(Image.open(out / "segmentation" / "0003.png"))
    dep = np.load(out / "depth" / "0003.npy")
    assert tuple(img[6, 9]) == (11, 22, 33) and img.sum() == 66
    assert dep[6, 9] == 4.5 and np.count_nonzero(dep) == 1
    assert seg[6, 9] == 2 and np.count_nonzero(seg) == 1


def test_13_classes(setup, tmp_path):
    mat, meta, (_, _, labels) = setup
    out = tmp_path / "out"
    assert prepare_nyuv2(mat, meta, out, classes=13)["classes"] == 13
    for index in (1, 2):
        seg = np.asarray(Image.open(out / "segmentation" / f"{index:04d}.png"))
        assert np.array_equal(seg, _l13(labels[index - 1]))
        assert seg[0, 0] == 0 and seg.max() <= 13


def test_resize_and_loader_reads_output(setup, tmp_path):
    mat, meta, (_, depths, _) = setup
    out = tmp_path / "out"
    assert prepare_nyuv2(mat, meta, out, size=(4, 5))["size"] == (4, 5)
    img = np.asarray(Image.open(out / "images" / "0001.png"))
    seg = np.asarray(Image.open(out / "segmentation" / "0001.png"))
    dep = np.load(out / "depth" / "0001.npy")
    assert img.shape == (4, 5, 3) and seg.shape == (4, 5) and dep.shape == (4, 5)
    assert set(np.unique(dep)) <= set(np.unique(depths[0]))  # nearest: no blended depths
    sample = NYUv2(out, "test", tasks=("segmentation", "depth"))[0]
    assert tuple(sample["image"].shape) == (3, 4, 5) and tuple(sample["depth"].shape) == (1, 4, 5)


def test_normals_npy_and_png(setup, tmp_path):
    mat, meta, _ = setup
    normals = tmp_path / "normals"
    normals.mkdir()
    vec = np.zeros((H, W, 3), np.float32)
    vec[..., 2] = 1.0
    vec[3, 4] = (1.0, 0.0, 0.0)
    for index in (1, 3, 5, 2):
        np.save(normals / f"{index:04d}.npy", vec)
    png = np.full((H, W, 3), 255, np.uint8)  # decodes to (1, 1, 1)
    Image.fromarray(png).save(normals / "00004.png")  # 5-digit name accepted too
    out = tmp_path / "out"
    assert prepare_nyuv2(mat, meta, out, normals_dir=normals, size=(4, 5))["normals"] is True
    got = np.load(out / "normals" / "0001.npy")
    assert got.shape == (4, 5, 3) and got.dtype == np.float32
    assert set(map(tuple, got.reshape(-1, 3))) <= {(0.0, 0.0, 1.0), (1.0, 0.0, 0.0)}
    assert np.allclose(np.load(out / "normals" / "0004.npy"), 1.0)
    assert len(NYUv2(out, "test", tasks=("normals",))) == 2
    (normals / "00004.png").unlink()
    with pytest.raises(DataError, match="0004.npy: missing normals for frame 4"):
        prepare_nyuv2(mat, meta, tmp_path / "out2", normals_dir=normals)


def test_limit(setup, tmp_path):
    mat, meta, _ = setup
    out = tmp_path / "out"
    summary = prepare_nyuv2(mat, meta, out, limit=1)
    assert (summary["train"], summary["val"]) == (1, 1)
    assert sorted(p.stem for p in (out / "images").iterdir()) == ["0001", "0002"]


def test_crop_border(tmp_path):
    images, depths, labels = _frames(n=2, h=480, w=640)
    mat = _write_labeled(tmp_path / "l.mat", images, depths, labels)
    out = tmp_path / "out"
    summary = prepare_nyuv2(mat, _write_meta(tmp_path / "meta", train=[1], test=[2]), out, crop_border=True)
    assert summary["size"] == (427, 561)
    img = np.asarray(Image.open(out / "images" / "0002.png"))
    assert np.array_equal(img, images[1, CROP_ROWS[0] : CROP_ROWS[1], CROP_COLS[0] : CROP_COLS[1]])
    assert np.array_equal(img[0, 0], images[1, 44, 40])  # MATLAB (45, 41)
    dep = np.load(out / "depth" / "0002.npy")
    assert dep.shape == (427, 561) and dep[-1, -1] == depths[1, 470, 600]  # MATLAB (471, 601)


def test_crop_border_needs_full_frames(setup, tmp_path):
    mat, meta, _ = setup
    with pytest.raises(DataError, match="crop_border needs 480x640"):
        prepare_nyuv2(mat, meta, tmp_path / "out", crop_border=True)


def test_errors_missing_files(setup, tmp_path):
    mat, meta, _ = setup
    with pytest.raises(DataError, match=r"nope\.mat: missing file"):
        prepare_nyuv2(tmp_path / "nope.mat", meta, tmp_path / "out")
    (meta / "splits.mat").unlink()
    with pytest.raises(DataError, match=r"splits\.mat: missing file"):
        prepare_nyuv2(mat, meta, tmp_path / "out")
    with pytest.raises(DataError, match=r"class13Mapping\.mat: missing file"):
        (meta / "class13Mapping.mat").unlink()
        load_class_mapping(meta, 13)
    not_hdf5 = tmp_path / "v5.mat"
    scipy_io.savemat(not_hdf5, {"x": 1})
    _write_meta(meta)
    with pytest.raises(DataError, match=r"v5\.mat: not an HDF5"):
        prepare_nyuv2(not_hdf5, meta, tmp_path / "out")


def test_errors_shapes_and_keys(tmp_path):
    images, depths, labels = _frames()
    meta = _write_meta(tmp_path / "meta")
    mat = _write_labeled(tmp_path / "a.mat", images, depths, labels, labels=None)
    with pytest.raises(DataError, match=r"a\.mat: missing dataset 'labels'"):
        prepare_nyuv2(mat, meta, tmp_path / "out")
    mat = _write_labeled(tmp_path / "b.mat", images, depths, labels, depths=depths)  # not transposed
    with pytest.raises(DataError, match=r"b\.mat: dataset 'depths' must have shape \(5, 10, 8\)"):
        prepare_nyuv2(mat, meta, tmp_path / "out")
    mat = _write_labeled(tmp_path / "c.mat", images, depths, labels, images=images)  # (N,H,W,3)
    with pytest.raises(DataError, match=r"c\.mat: dataset 'images' must have shape \(N,3,W,H\)"):
        prepare_nyuv2(mat, meta, tmp_path / "out")
    bad = labels.copy()
    bad[1, 0, 0] = 900
    mat = _write_labeled(tmp_path / "d.mat", images, depths, bad)
    with pytest.raises(DataError, match=r"d\.mat: frame 2 labels must be in 0\.\.894"):
        prepare_nyuv2(mat, meta, tmp_path / "out")


def test_errors_mappings_and_splits(setup, tmp_path):
    mat, _, _ = setup
    meta = _write_meta(tmp_path / "m1", map40=MAP40[:893])
    with pytest.raises(DataError, match=r"classMapping40\.mat: 'mapClass' must have 894 entries"):
        prepare_nyuv2(mat, meta, tmp_path / "out")
    meta = _write_meta(tmp_path / "m2", map13=MAP13[:39])
    with pytest.raises(DataError, match=r"class13Mapping\.mat: 'classMapping13\.labels13' must have 40 entries"):
        prepare_nyuv2(mat, meta, tmp_path / "out", classes=13)
    meta = _write_meta(tmp_path / "m3", map40=np.full(894, 41))
    with pytest.raises(DataError, match=r"'mapClass' values must be in 1\.\.40"):
        prepare_nyuv2(mat, meta, tmp_path / "out")
    meta = _write_meta(tmp_path / "m4", test=[2, 6])
    with pytest.raises(DataError, match=r"splits\.mat: 'testNdxs' indices out of range \(2\.\.6, expected 1\.\.5\)"):
        prepare_nyuv2(mat, meta, tmp_path / "out")
    meta = _write_meta(tmp_path / "m5", train=[0, 1])
    with pytest.raises(DataError, match=r"'trainNdxs' indices out of range"):
        prepare_nyuv2(mat, meta, tmp_path / "out")
    scipy_io.savemat(meta / "splits.mat", {"train": np.ones((2, 1))})
    with pytest.raises(DataError, match=r"splits\.mat: missing variable 'trainNdxs'"):
        prepare_nyuv2(mat, meta, tmp_path / "out")
    with pytest.raises(DataError, match=r"^prepare nyuv2 --classes: expected 40 or 13, got 894$"):
        prepare_nyuv2(mat, meta, tmp_path / "out", classes=894)


def test_missing_h5py_message(setup, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "h5py":
            raise ImportError("no h5py")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    mat, meta, _ = setup
    with pytest.raises(DataError, match=r"pip install 'sparsemtl\[nyu\]'"):
        prepare_nyuv2(mat, meta, tmp_path / "out")


@pytest.mark.skipif(not REAL_META.is_dir(), reason="real NYUv2 companion files not available")
def test_real_companion_files():
    train, test = load_splits(REAL_META, 1449)
    assert len(train) == 795 and len(test) == 654
    assert min(train + test) == 1 and max(train + test) == 1449
    assert set(train).isdisjoint(test) and len(set(train) | set(test)) == 1449
    lut40 = load_class_mapping(REAL_META, 40)
    assert lut40.shape == (895,) and lut40[0] == 0 and set(lut40[1:]) == set(range(1, 41))
    lut13 = load_class_mapping(REAL_META, 13)
    assert lut13[0] == 0 and set(lut13[1:]) == set(range(1, 14))
    labels13 = scipy_io.loadmat(REAL_META / "class13Mapping.mat")["classMapping13"]["labels13"][0, 0].ravel()
    assert tuple(labels13) == LABELS13
    assert np.array_equal(lut13, np.concatenate([[0], labels13])[lut40])


# ---------------------------------------------------------------- more bad inputs, each one DataError line


def _error(build) -> str:
    with pytest.raises(DataError) as err:
        build()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_split_frames_listed_twice_or_in_both_lists(setup, tmp_path):
    mat, _, _ = setup
    meta = _write_meta(tmp_path / "dup", train=[1, 3, 1], test=[2, 4])
    message = _error(lambda: prepare_nyuv2(mat, meta, tmp_path / "out"))
    assert message == f"{meta / 'splits.mat'}: 'trainNdxs' lists frame 1 twice; expected each frame once"
    meta = _write_meta(tmp_path / "both", train=[1, 3, 5], test=[2, 3, 5])
    message = _error(lambda: prepare_nyuv2(mat, meta, tmp_path / "out"))
    assert message == f"{meta / 'splits.mat'}: frame 3 is in both 'trainNdxs' and 'testNdxs' (2 frames in both)"


def test_bad_frame_values_and_unreadable_frames(tmp_path):
    images, depths, labels = _frames()
    meta = _write_meta(tmp_path / "meta")
    depths[3, 2, 2] = np.nan
    mat = _write_labeled(tmp_path / "nan.mat", images, depths, labels)
    assert _error(lambda: prepare_nyuv2(mat, meta, tmp_path / "out")) == (
        f"{mat}: frame 4 depths must be finite metres >= 0"
    )
    images, depths, labels = _frames()
    mat = tmp_path / "corrupt.mat"
    with h5py.File(mat, "w") as f:
        f.create_dataset("images", data=images.transpose(0, 3, 2, 1), chunks=(1, 3, W, H), compression="gzip")
        f.create_dataset("depths", data=depths.transpose(0, 2, 1))
        f.create_dataset("labels", data=labels.transpose(0, 2, 1))
        chunk = f["images"].id.get_chunk_info(0)  # frame 1, compressed
    with open(mat, "r+b") as fh:
        fh.seek(chunk.byte_offset)
        fh.write(b"\x00" * chunk.size)
    message = _error(lambda: prepare_nyuv2(mat, meta, tmp_path / "out"))
    assert message.startswith(f"{mat}: cannot read frame 1 (")


def test_bad_arguments_and_mapping_values(setup, tmp_path):
    mat, meta, _ = setup
    assert _error(lambda: prepare_nyuv2(mat, meta, tmp_path / "out", size=(0, 4))) == (
        "prepare nyuv2 --size: expected H W, two positive integers, got (0, 4)"
    )
    assert _error(lambda: prepare_nyuv2(mat, meta, tmp_path / "out", limit=0)) == (
        "prepare nyuv2 --limit: expected a positive integer, got 0"
    )
    names = _write_meta(tmp_path / "names", map40=np.array([f"c{k}" for k in range(894)]))
    assert _error(lambda: load_class_mapping(names)) == (
        f"{names / 'classMapping40.mat'}: 'mapClass' must hold class numbers, got <U4 values"
    )
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / "images").write_text("a file where the images folder goes")
    message = _error(lambda: prepare_nyuv2(mat, meta, tmp_path / "blocked"))
    assert message.startswith(f"{tmp_path / 'blocked' / 'images'}: cannot create the output folder (")
