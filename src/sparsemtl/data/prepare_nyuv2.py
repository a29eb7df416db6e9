"""Convert the official ``nyu_depth_v2_labeled.mat`` into the NYUD-MT layout read by :mod:`.nyuv2`.

Inputs:

* ``labeled_mat``: the official MATLAB v7.3 (HDF5) file, read with ``h5py`` one frame at a time, so the
  2.8 GB file is never loaded whole. Datasets as h5py reports them (column-major, W before H):
  ``images`` (N,3,W,H) uint8, ``depths`` (N,W,H) float32 metres, ``labels`` (N,W,H) 0..894.
* ``meta_dir``: the MATLAB v5 companion files ``splits.mat`` (``trainNdxs``, ``testNdxs``, 1-based),
  ``classMapping40.mat`` (``mapClass`` 1x894 -> 1..40) and ``class13Mapping.mat``
  (``classMapping13.labels13`` 1x40 -> 1..13), read with ``scipy.io.loadmat``.
* ``normals_dir`` (optional): one file per frame, named by the frame id (``0001``) or by the plain /
  5- / 6-digit zero-padded 1-based frame index (``1``, ``00001``, ``000001``), either ``.npy`` (H,W,3)
  float vectors or ``.png`` RGB decoded ``n = 2v/255 - 1``. A map at the full frame size is cropped like
  the frame when ``crop_border`` is set; then it is resized (nearest) to the written frame size.

Output under ``out`` (the NYUD-MT layout):

* ``images/<id>.png`` RGB uint8, ``segmentation/<id>.png`` uint8 with 0 = void and 1..40 (1..13 when
  ``classes=13``), ``depth/<id>.npy`` (H,W) float32 metres, ``normals/<id>.npy`` (H,W,3) float32 only when
  ``normals_dir`` is given;
* ``gt_sets/train.txt`` from ``trainNdxs`` and ``gt_sets/val.txt`` from ``testNdxs`` (the MTL repositories
  call the 654 official test frames "val").

``<id>`` is the 1-based frame index zero-padded to 4 digits (``0001`` .. ``1449``), the numbering of
the common extractions. Labels go through ``l40 = [0, *mapClass][labels]`` and
``l13 = [0, *labels13][l40]`` so 0 stays void.

``crop_border`` removes the white border with the NYU toolbox crop (``get_projection_mask.m``:
``mask(45:471, 41:601)``, 1-based inclusive), i.e. rows ``44:471`` and columns ``40:601`` in 0-based
Python slices: 427x561 out of 480x640. That exact toolbox window is used (not the 425x560 of Gupta's
processed data) because it is the one documented by the dataset's own toolbox. The crop is applied
before the optional resize. ``size`` is (H, W); the image is resized bilinearly, labels, depth and
normals with nearest neighbour (no blended class ids or depths across edges).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError, one_line

NUM_RAW_CLASSES = 894
CROP_ROWS = (44, 471)
"""0-based half-open row window of the NYU toolbox crop (MATLAB 45:471)."""
CROP_COLS = (40, 601)
"""0-based half-open column window of the NYU toolbox crop (MATLAB 41:601)."""
FULL_SIZE = (480, 640)
_NORMAL_EXTS = (".npy", ".png")


def _import_h5py():
    try:
        import h5py
    except ImportError:
        raise DataError(
            "reading nyu_depth_v2_labeled.mat (MATLAB v7.3 / HDF5) needs h5py: pip install 'sparsemtl[nyu]'"
        ) from None
    return h5py


def frame_id(index: int) -> str:
    """The NYUD-MT id of a 1-based frame index: zero-padded to 4 digits."""
    return f"{index:04d}"


# ---------------------------------------------------------------- companion .mat files


def _loadmat(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: missing file")
    from scipy.io import loadmat

    try:
        return loadmat(path)
    except Exception as exc:  # scipy raises several types for corrupt or v7.3 files
        raise DataError(f"{path}: not a readable MATLAB v5 file ({one_line(exc)})") from None


def _key(mat: dict, key: str, path: Path) -> np.ndarray:
    if key not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{path}: missing variable '{key}' (found: {', '.join(keys) or 'none'})")
    return np.asarray(mat[key])


def _mapping(arr: np.ndarray, path: Path, name: str, length: int, top: int) -> np.ndarray:
    """A 1-based lookup table of ``length`` entries with values in 1..top, with 0 prepended for void."""
    if arr.dtype == object or arr.size != length:
        raise DataError(f"{path}: '{name}' must have {length} entries, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{path}: '{name}' must hold class numbers, got {arr.dtype} values")
    flat = arr.reshape(-1).astype(np.int64)
    if flat.min() < 1 or flat.max() > top:
        raise DataError(f"{path}: '{name}' values must be in 1..{top}, got {flat.min()}..{flat.max()}")
    return np.concatenate([[0], flat])


def load_class_mapping(meta_dir: Path, classes: int = 40) -> np.ndarray:
    """Lookup table ``lut`` (895 entries) with ``lut[raw_label]`` = 0 (void) or 1..``classes``."""
    meta_dir = Path(meta_dir)
    _check_classes(classes)
    path40 = meta_dir / "classMapping40.mat"
    lut = _mapping(_key(_loadmat(path40), "mapClass", path40), path40, "mapClass", NUM_RAW_CLASSES, 40)
    if classes == 13:
        path13 = meta_dir / "class13Mapping.mat"
        struct = _key(_loadmat(path13), "classMapping13", path13)
        if struct.dtype.names is None or "labels13" not in struct.dtype.names or struct.size != 1:
            raise DataError(f"{path13}: 'classMapping13' must be a struct with a 'labels13' field")
        labels13 = np.asarray(struct["labels13"].reshape(-1)[0])
        lut = _mapping(labels13, path13, "classMapping13.labels13", 40, 13)[lut]
    return lut


def _check_classes(classes: int) -> None:
    if classes not in (40, 13):
        raise DataError(f"prepare nyuv2 --classes: expected 40 or 13, got {classes!r}")


def load_splits(meta_dir: Path, num_frames: int | None = None) -> tuple[list[int], list[int]]:
    """``(train, test)`` 1-based frame indices from ``splits.mat``, checked against ``num_frames``; a
    frame listed twice, or in both lists, is an error (it would put one sample in two splits)."""
    path = Path(meta_dir) / "splits.mat"
    mat = _loadmat(path)
    out = []
    for name in ("trainNdxs", "testNdxs"):
        arr = _key(mat, name, path)
        if arr.dtype == object or arr.size == 0 or not np.issubdtype(arr.dtype, np.number):
            raise DataError(f"{path}: '{name}' must be a non-empty numeric index vector")
        idx = arr.reshape(-1).astype(np.int64)
        hi = num_frames if num_frames is not None else np.iinfo(np.int64).max
        if idx.min() < 1 or idx.max() > hi:
            bound = f"1..{num_frames}" if num_frames is not None else ">= 1"
            raise DataError(f"{path}: '{name}' indices out of range ({idx.min()}..{idx.max()}, expected {bound})")
        repeated = _first_repeat(idx)
        if repeated is not None:
            raise DataError(f"{path}: '{name}' lists frame {repeated} twice; expected each frame once")
        out.append([int(i) for i in idx])
    both = sorted(set(out[0]) & set(out[1]))
    if both:
        raise DataError(f"{path}: frame {both[0]} is in both 'trainNdxs' and 'testNdxs' ({len(both)} frames in both)")
    return out[0], out[1]


def _first_repeat(idx: np.ndarray) -> int | None:
    values, counts = np.unique(idx, return_counts=True)
    return int(values[counts > 1][0]) if (counts > 1).any() else None


# ---------------------------------------------------------------- per-frame processing


def _check_labeled(h5, path: Path) -> int:
    for key in ("images", "depths", "labels"):
        if key not in h5 or not hasattr(h5[key], "shape"):
            raise DataError(f"{path}: missing dataset '{key}' (found: {', '.join(sorted(h5.keys())) or 'none'})")
    images, depths, labels = h5["images"], h5["depths"], h5["labels"]
    if len(images.shape) != 4 or images.shape[1] != 3:
        raise DataError(f"{path}: dataset 'images' must have shape (N,3,W,H), got {images.shape}")
    n, _, w, h = images.shape
    for key, ds in (("depths", depths), ("labels", labels)):
        if tuple(ds.shape) != (n, w, h):
            raise DataError(f"{path}: dataset '{key}' must have shape {(n, w, h)} like 'images', got {ds.shape}")
    return n


def _crop(arr: np.ndarray) -> np.ndarray:
    return arr[CROP_ROWS[0] : CROP_ROWS[1], CROP_COLS[0] : CROP_COLS[1]]


def _resize(arr: np.ndarray, size: tuple[int, int] | None, bilinear: bool = False) -> np.ndarray:
    """Resize an (H,W) or (H,W,C) array to ``size`` = (H, W); channels are resized one by one."""
    if size is None or tuple(arr.shape[:2]) == tuple(size):
        return arr
    resample = Image.BILINEAR if bilinear else Image.NEAREST
    if arr.ndim == 3 and arr.dtype == np.uint8 and arr.shape[2] == 3:
        return np.asarray(Image.fromarray(arr, "RGB").resize((size[1], size[0]), resample))
    if arr.ndim == 3:
        return np.stack([_resize(arr[..., c], size, bilinear) for c in range(arr.shape[2])], axis=-1)
    out = Image.fromarray(arr.astype(np.float32), "F").resize((size[1], size[0]), resample)
    return np.asarray(out).astype(arr.dtype)


def _find_normals(normals_dir: Path, index: int) -> Path:
    stems = dict.fromkeys((frame_id(index), str(index), f"{index:05d}", f"{index:06d}"))
    for stem in stems:
        for ext in _NORMAL_EXTS:
            path = normals_dir / f"{stem}{ext}"
            if path.is_file():
                return path
    raise DataError(f"{normals_dir / (frame_id(index) + '.npy')}: missing normals for frame {index} (.npy or .png)")


def _read_normals(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("RGB")).astype(np.float32) * (2.0 / 255.0) - 1.0
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable normals ({one_line(exc)})") from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(f"{path}: normals must have shape (H,W,3), got {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: normals contain NaN or inf")
    return arr


# ---------------------------------------------------------------- entry point


def prepare_nyuv2(
    labeled_mat: Path,
    meta_dir: Path,
    out: Path,
    size: tuple[int, int] | None = None,
    classes: int = 40,
    normals_dir: Path | None = None,
    crop_border: bool = False,
    limit: int | None = None,
) -> dict:
    """Write the NYUD-MT layout under ``out`` from the official labelled .mat; return a summary dict.

    ``size`` is the output (H, W) (None keeps 480x640, or 427x561 with ``crop_border``). ``limit`` keeps
    the first ``limit`` frames of each official split (a quick partial copy). The summary holds ``out``,
    ``train`` / ``val`` frame counts, ``classes``, ``size`` (H, W written), ``normals`` and ``crop_border``.
    """
    labeled_mat, meta_dir, out = Path(labeled_mat), Path(meta_dir), Path(out)
    normals_dir = Path(normals_dir) if normals_dir is not None else None
    _check_classes(classes)
    if size is not None:
        if len(size) != 2 or min(int(v) for v in size) < 1:
            raise DataError(f"prepare nyuv2 --size: expected H W, two positive integers, got {size!r}")
        size = (int(size[0]), int(size[1]))
    if limit is not None and limit < 1:
        raise DataError(f"prepare nyuv2 --limit: expected a positive integer, got {limit!r}")
    if not labeled_mat.is_file():
        raise DataError(f"{labeled_mat}: missing file")
    if normals_dir is not None and not normals_dir.is_dir():
        raise DataError(f"{normals_dir}: missing normals folder")
    lut = load_class_mapping(meta_dir, classes)
    h5py = _import_h5py()
    try:
        h5 = h5py.File(labeled_mat, "r")
    except OSError as exc:
        raise DataError(f"{labeled_mat}: not an HDF5 (MATLAB v7.3) file ({one_line(exc)})") from None
    with h5:
        n = _check_labeled(h5, labeled_mat)
        train, test = load_splits(meta_dir, n)
        if limit is not None:
            train, test = train[:limit], test[:limit]
        dirs = {name: out / name for name in ("images", "segmentation", "depth", "gt_sets")}
        if normals_dir is not None:
            dirs["normals"] = out / "normals"
        for folder in dirs.values():
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DataError(f"{folder}: cannot create the output folder ({one_line(exc)})") from None
        written = None
        for index in train + test:
            written = _write_frame(h5, labeled_mat, index, lut, dirs, size, crop_border, normals_dir)
        _write(dirs["gt_sets"] / "train.txt", lambda p: p.write_text("".join(f"{frame_id(i)}\n" for i in train)))
        _write(dirs["gt_sets"] / "val.txt", lambda p: p.write_text("".join(f"{frame_id(i)}\n" for i in test)))
    return {
        "out": str(out),
        "train": len(train),
        "val": len(test),
        "classes": classes,
        "size": written,
        "normals": normals_dir is not None,
        "crop_border": crop_border,
    }


def _read_frame(h5, path: Path, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (H,W,3) uint8, depth (H,W) float32 metres, raw labels (H,W) int64) of 1-based frame ``index``."""
    i = index - 1
    try:
        image = np.asarray(h5["images"][i]).transpose(2, 1, 0)
        depth = np.asarray(h5["depths"][i]).T.astype(np.float32)
        raw = np.asarray(h5["labels"][i]).T
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{path}: cannot read frame {index} ({one_line(exc)})") from None
    if not np.issubdtype(raw.dtype, np.number) or not np.isfinite(raw).all():
        raise DataError(f"{path}: frame {index} labels must be integers 0..{NUM_RAW_CLASSES}")
    if not np.isfinite(depth).all() or depth.min() < 0:
        raise DataError(f"{path}: frame {index} depths must be finite metres >= 0")
    return np.ascontiguousarray(image).astype(np.uint8), np.ascontiguousarray(depth), raw.astype(np.int64)


def _write(path: Path, save) -> None:
    """``save(path)``, with a failed write (disk full, no permission) as a DataError naming ``path``."""
    try:
        save(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot write ({one_line(exc)})") from None


def _write_frame(h5, path, index, lut, dirs, size, crop_border, normals_dir) -> tuple[int, int]:
    image, depth, raw = _read_frame(h5, path, index)
    if raw.min() < 0 or raw.max() > NUM_RAW_CLASSES:
        raise DataError(f"{path}: frame {index} labels must be in 0..{NUM_RAW_CLASSES}, got {raw.min()}..{raw.max()}")
    seg = lut[raw].astype(np.uint8)
    full_hw = image.shape[:2]
    if crop_border:
        if full_hw != FULL_SIZE:
            raise DataError(f"{path}: crop_border needs 480x640 frames, got {full_hw[0]}x{full_hw[1]}")
        image, depth, seg = _crop(image), _crop(depth), _crop(seg)
    image = _resize(image, size, bilinear=True)
    depth, seg = _resize(depth, size), _resize(seg, size)
    fid = frame_id(index)
    _write(dirs["images"] / f"{fid}.png", Image.fromarray(np.ascontiguousarray(image), "RGB").save)
    _write(dirs["segmentation"] / f"{fid}.png", Image.fromarray(np.ascontiguousarray(seg), "L").save)
    _write(dirs["depth"] / f"{fid}.npy", lambda p: np.save(p, np.ascontiguousarray(depth, dtype=np.float32)))
    if normals_dir is not None:
        npath = _find_normals(normals_dir, index)
        normals = _read_normals(npath)
        if crop_border and normals.shape[:2] == full_hw:
            normals = _crop(normals)
        normals = _resize(normals, image.shape[:2])
        _write(dirs["normals"] / f"{fid}.npy", lambda p: np.save(p, np.ascontiguousarray(normals, dtype=np.float32)))
    return tuple(int(s) for s in image.shape[:2])
