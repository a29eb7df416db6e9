"""``nyuv2``: NYU-Depth-v2 for multi-task learning, read from either of two common on-disk layouts.

* ``nyud-mt`` (ASTMT / MTL-PyTorch / ATRC / InvPT): ``images/<id>.jpg|.png``,
  ``segmentation/<id>.png`` (0 = void, 1..40), ``depth/<id>.npy`` (metres, (H,W)),
  ``normals/<id>.npy`` ((H,W,3)) or ``.png`` (decoded ``2v/255 - 1``) and
  ``gt_sets/{train,val}.txt`` (opaque ids, one per line). 40 classes.
* ``mtan`` (lorenmt/mtan, LibMTL): ``{train,val}/{image,label,depth,normal}/<i>.npy`` with ``i``
  contiguous from 0; image (H,W,3) floats in [0,1], label (H,W) floats with -1 = void and
  0..12 = classes, depth (H,W,1) metres, normal (H,W,3). 13 classes.

In both layouts the official "val" list is the 654-frame **test** split; our ``val`` split is a
seeded fraction carved out of the official train list (select epochs on it, report test once).

Every sample follows the library format: ``image`` float32 (3,H,W) in [0,1], ``segmentation``
int64 (H,W) with void = ``IGNORE_INDEX``, ``depth`` float32 (1,H,W) in metres with 0 = invalid,
``normals`` float32 (3,H,W) unit vectors with all-zero = invalid. Only the files of the
requested ``tasks`` are read, so a partial copy of the dataset is usable. Depth files in another
unit are read with ``depth_scale`` (metres per stored unit, ``data.depth_scale``; 0.001 for mm).

Split lists must list each id once, and an id in both official lists is an error (test data would
leak into training). :meth:`NYUv2.check_sample` is the fast per-sample pass shared by
``skip_bad_samples`` and the pre-flight check (:mod:`.check`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..config import DataConfig
from ..errors import ConfigError, DataError, one_line
from ..tasks.spec import IGNORE_INDEX, TaskSpec
from .sample_check import (
    SampleFacts,
    check_depth,
    check_unit_normals,
    class_count_problem,
    depth_scale_problem,
    verify_image,
)
from .samples import keep_loadable, read_image, resize_sample
from .split_lists import split_ids

TASKS = ("segmentation", "depth", "normals")
LAYOUTS = ("nyud-mt", "mtan")
CLASS_NAMES_40 = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)  # fmt: skip
"""Gupta's 40 classes in ``classMapping40.mat:className`` order (spelling kept)."""
CLASS_NAMES_13 = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa", "table", "tv", "wall",
    "window",
)  # fmt: skip
"""The 13 classes in ``class13Mapping.mat:classNames`` order (MTAN ids are these minus 1)."""
LABELS13 = (12, 5, 6, 1, 4, 9, 10, 12, 13, 6, 8, 6, 13, 10, 6, 13, 6, 7, 7, 5, 7, 3, 2, 6, 11, 7, 7, 7, 7, 7, 7, 6, 7,
            7, 7, 7, 7, 7, 6, 7)  # fmt: skip
"""``class13Mapping.mat:labels13``: 1-based 40-class id -> 1-based 13-class id."""
NPY_MAGIC = b"\x93NUMPY"
"""The first bytes of every .npy file."""
MIN_NORMAL_NORM = 0.5
"""Normals shorter than this are invalid (zeroed); catches the grey (127,127,127) PNG fill."""

_NYUD_DIRS = {"image": "images", "segmentation": "segmentation", "depth": "depth", "normals": "normals"}
_NYUD_EXTS = {"image": (".jpg", ".png"), "segmentation": (".png",), "depth": (".npy",), "normals": (".npy", ".png")}
_MTAN_DIRS = {"image": "image", "segmentation": "label", "depth": "depth", "normals": "normal"}
_VOID = {"nyud-mt": 0, "mtan": -1}
"""Stored void label id per layout."""
_ID_OFFSET = {"nyud-mt": 1, "mtan": 0}
"""Stored label id minus 0-based class id per layout (NYUD-MT classes are 1..C, MTAN 0..12)."""


# ---------------------------------------------------------------- layout detection and split lists


def _layout_requirements(root: Path) -> dict[str, tuple[str, list[str]]]:
    """Per layout: what it needs (for the message) and which of those are missing."""
    nyud_missing = [p for p in ("images/", "gt_sets/train.txt") if not (root / p.rstrip("/")).exists()]
    mtan_missing = [] if any((root / "train" / "image").glob("*.npy")) else ["train/image/*.npy"]
    return {
        "nyud-mt": ("NYUD-MT needs images/ and gt_sets/train.txt", nyud_missing),
        "mtan": ("MTAN needs train/image/*.npy", mtan_missing),
    }


def detect_layout(root: str | Path, layout: str = "auto") -> str:
    """``layout`` itself when forced and present, else the one layout whose files exist under ``root``."""
    root = Path(root)
    if layout != "auto" and layout not in LAYOUTS:
        raise ConfigError(f"config key 'data.layout': expected 'auto' or one of {', '.join(LAYOUTS)}, got {layout!r}")
    needs = _layout_requirements(root)
    candidates = LAYOUTS if layout == "auto" else (layout,)
    found = [name for name in candidates if not needs[name][1]]
    if len(found) > 1:
        raise DataError(f"NYU-v2 root '{root}': matches both the NYUD-MT and MTAN layouts; set data.layout")
    if not found:
        parts = [f"{needs[n][0]} (missing: {', '.join(needs[n][1])})" for n in candidates]
        raise DataError(f"NYU-v2 root '{root}': no supported layout: {'; '.join(parts)}")
    return found[0]


def _nyud_ids(root: Path, official: str) -> list[str]:
    """Ids of the official list ``official``; it must not repeat an id nor share one with the other list."""
    return split_ids({name: root / "gt_sets" / f"{name}.txt" for name in ("train", "val")}, official)


def _mtan_ids(root: Path, official: str) -> list[str]:
    folder = root / official / "image"
    stems = [p.stem for p in folder.glob("*.npy")]
    if not stems:
        raise DataError(f"{folder}: empty split (no *.npy files)")
    bad = sorted(s for s in stems if not s.isdigit())
    if bad:
        raise DataError(f"{folder / (bad[0] + '.npy')}: MTAN file names must be integers")
    present = {int(s) for s in stems}
    gaps = [i for i in range(len(present)) if i not in present]
    if gaps:
        raise DataError(f"{folder / f'{gaps[0]}.npy'}: missing; MTAN indices must be contiguous from 0")
    return [str(i) for i in range(len(present))]


def carve_validation(ids: list[str], fraction: float, seed: int, source: Path) -> tuple[list[str], list[str]]:
    """Seeded (train, val) partition of the official train ids, each keeping the file order;
    ``source`` (where the train ids come from) is named in the error."""
    if len(ids) < 2:
        raise DataError(
            f"{source}: cannot carve a validation split (data.val_fraction) out of {len(ids)} training sample(s); "
            "expected at least 2"
        )
    num_val = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    chosen = set(np.random.default_rng(seed).permutation(len(ids))[:num_val].tolist())
    train = [s for i, s in enumerate(ids) if i not in chosen]
    val = [s for i, s in enumerate(ids) if i in chosen]
    return train, val


# ---------------------------------------------------------------- readers: file -> checked array


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        with open(path, "rb") as fh:  # numpy calls any file without its header "pickled data"
            reason = one_line(exc) if fh.read(len(NPY_MAGIC)) == NPY_MAGIC else "no NumPy header"
        raise DataError(f"{path}: unreadable .npy file ({reason})") from None


def _check_shape(arr: np.ndarray, path: Path, channels: int | None, what: str) -> np.ndarray:
    """``arr`` as (H,W) (``channels`` None) or (H,W,channels); a trailing singleton axis is dropped."""
    if channels is None and arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    ok = arr.ndim == 2 if channels is None else (arr.ndim == 3 and arr.shape[-1] == channels)
    if not ok:
        want = "(H, W)" if channels is None else f"(H, W, {channels})"
        raise DataError(f"{path}: {what} has shape {arr.shape}, expected {want}")
    return arr


def _check_finite(arr: np.ndarray, path: Path, what: str) -> None:
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: {what} contains NaN or inf")


def _image(arr: np.ndarray, path: Path) -> np.ndarray:
    """(H,W,3) float32 in [0,1]; 8-bit arrays are scaled, float arrays must already be in range."""
    arr = _check_shape(arr, path, 3, "image")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    _check_finite(arr, path, "image")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise DataError(f"{path}: image values span [{arr.min():g}, {arr.max():g}], expected [0, 1]")
    return arr


def _segmentation(arr: np.ndarray, path: Path, void: int, num_classes: int) -> np.ndarray:
    """(H,W) int64 with ``void`` -> IGNORE_INDEX and ids shifted so classes are 0..num_classes-1."""
    arr = _check_shape(arr, path, None, "label")
    low = 0 if void == 0 else -1
    high = low + num_classes
    valid = np.isfinite(arr) & (arr == np.round(arr)) & (arr >= low) & (arr <= high)
    if not valid.all():
        bad = arr[~valid].flat[0]
        raise DataError(
            f"{path}: class id {bad:g} out of range; expected integers {low}..{high} ({low} = void) "
            f"for {num_classes} classes (data.classes)"
        )
    labels = arr.astype(np.int64) - (1 if void == 0 else 0)
    labels[labels < 0] = IGNORE_INDEX
    return labels


def _depth(arr: np.ndarray, path: Path, scale: float) -> np.ndarray:
    """Metres: the stored values times ``scale`` (``data.depth_scale``, e.g. 0.001 for millimetres)."""
    arr = _check_shape(arr, path, None, "depth").astype(np.float32)
    _check_finite(arr, path, "depth")
    if arr.min() < 0:
        raise DataError(f"{path}: negative depth {arr.min():g}; expected non-negative values with 0 = invalid")
    return arr * np.float32(scale) if scale != 1.0 else arr


def _valid_normals(arr: np.ndarray, path: Path) -> np.ndarray:
    """(H,W,3) finite float32 vectors, as stored."""
    arr = _check_shape(arr, path, 3, "normals").astype(np.float32)
    _check_finite(arr, path, "normals")
    return arr


def _normals(arr: np.ndarray, path: Path) -> np.ndarray:
    """Unit vectors; ones shorter than MIN_NORMAL_NORM (zero fill, grey PNG fill) become all-zero."""
    arr = _valid_normals(arr, path)
    norm = np.linalg.norm(arr, axis=-1, keepdims=True)
    valid = norm >= MIN_NORMAL_NORM
    return np.where(valid, arr / np.where(valid, norm, 1.0), 0.0).astype(np.float32)


def _stored_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header alone, without decoding the pixels."""
    try:
        if path.suffix == ".npy":
            return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape[:2])
        with Image.open(path) as img:
            return img.height, img.width
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: corrupt or truncated image ({one_line(exc)})") from None


def _read(modality: str, path: Path) -> np.ndarray:
    """The stored array: ``.npy`` as saved, images as RGB, label PNGs as stored, normal PNGs decoded ``2v/255 - 1``."""
    if path.suffix == ".npy":
        return _read_npy(path)
    arr = read_image(path, None if modality == "segmentation" else "RGB")
    return arr.astype(np.float32) * (2.0 / 255.0) - 1.0 if modality == "normals" else arr


def _convert(modality: str, layout: str, arr: np.ndarray, path: Path, num_classes: int, depth_scale: float):
    """A stored array turned into the checked array of the library convention."""
    if modality == "image":
        return _image(arr, path)
    if modality == "segmentation":
        return _segmentation(arr, path, void=_VOID[layout], num_classes=num_classes)
    if modality == "depth":
        return _depth(arr, path, depth_scale)
    return _normals(arr, path)


def _top_class(raw: np.ndarray, layout: str) -> int | None:
    """Highest 0-based class id of a stored label array (void and non-finite values ignored)."""
    finite = raw[np.isfinite(raw)] if raw.dtype.kind == "f" else raw
    if finite.size == 0:
        return None
    top = int(finite.max()) - _ID_OFFSET[layout]
    return top if top >= 0 else None


def _check_target_size(arr: np.ndarray, path: Path, task: str, size: tuple[int, int]) -> None:
    if arr.shape[:2] != size:
        raise DataError(f"{path}: {task} is {arr.shape[0]}x{arr.shape[1]} but its image is {size[0]}x{size[1]}")


def _decode(modality: str, layout: str, path: Path, num_classes: int = 40, depth_scale: float = 1.0) -> np.ndarray:
    """Read one file and turn it into the checked array of the library convention."""
    return _convert(modality, layout, _read(modality, path), path, num_classes, depth_scale)


# ---------------------------------------------------------------- the dataset


class NYUv2(Dataset):
    """One split (``train``, ``val`` or ``test``) of NYU-Depth-v2 in the NYUD-MT or MTAN layout.

    Loading is lazy: a bad file raises :class:`DataError` when its sample is read, except a bad
    split list (missing, empty, an id twice or in both official lists), which fails at construction.
    With ``skip_bad_samples`` every sample is checked once at construction (:meth:`check_sample`)
    and bad ones are dropped and listed in ``skipped``. ``sample_ids`` holds the ids actually served
    (record them to reproduce the split). Depth is stored values times ``depth_scale`` (metres).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        layout: str = "auto",
        tasks: tuple[str, ...] = TASKS,
        val_fraction: float = 0.1,
        seed: int = 0,
        image_size: tuple[int, int] | None = None,
        resize_targets: bool = True,
        classes: int | None = None,
        depth_scale: float = 1.0,
        skip_bad_samples: bool = False,
    ) -> None:
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ConfigError(f"config key 'tasks': NYU-v2 has no task {unknown[0]!r}; available: {', '.join(TASKS)}")
        if split not in ("train", "val", "test"):
            raise ConfigError(f"unknown split {split!r}; expected one of train, val, test")
        if not (np.isfinite(depth_scale) and depth_scale > 0):
            raise ConfigError(f"config key 'data.depth_scale': expected metres per stored unit > 0, got {depth_scale}")
        self.root = Path(root)
        self.split = split
        self.layout = detect_layout(self.root, layout)
        self.tasks = tuple(tasks)
        self.image_size = tuple(image_size) if image_size is not None else None
        self.resize_targets = resize_targets
        self.depth_scale = float(depth_scale)
        if classes not in (None, 13, 40):
            raise ConfigError(f"config key 'data.classes': NYU-v2 has 40 or 13 classes, got {classes}")
        if self.layout == "mtan" and classes == 40:
            raise DataError(
                f"{self.root}: an MTAN tree has 13 classes (label ids -1..12) but data.classes is 40; "
                "set data.classes=13 or 0"
            )
        self.classes = classes
        self._official = "val" if split == "test" else "train"
        list_ids = _mtan_ids if self.layout == "mtan" else _nyud_ids
        ids = list_ids(self.root, self._official)
        if split != "test":
            source = self._folder("image") if self.layout == "mtan" else self.root / "gt_sets" / "train.txt"
            ids = carve_validation(ids, val_fraction, seed, source)[split == "val"]
        self.sample_ids: list[str] = ids
        self.skipped: list[tuple[str, str]] = []
        self._native_size: tuple[int, int] | None = None
        if skip_bad_samples:
            self.sample_ids, self.skipped = keep_loadable(self.sample_ids, self.check_sample, f"NYU-v2 {split}")

    @property
    def num_classes(self) -> int:
        """40 for NYUD-MT (13 for a tree written by ``prepare nyuv2 --classes 13``, read with ``classes=13``),
        13 for MTAN."""
        return 13 if self.layout == "mtan" or self.classes == 13 else 40

    @property
    def task_specs(self) -> dict[str, TaskSpec]:
        """Specs of the loaded tasks (segmentation with :attr:`num_classes` classes)."""
        names = CLASS_NAMES_13 if self.num_classes == 13 else CLASS_NAMES_40
        specs = {
            "segmentation": TaskSpec("segmentation", "segmentation", len(names), names),
            "depth": TaskSpec("depth", "depth"),
            "normals": TaskSpec("normals", "normals"),
        }
        return {t: specs[t] for t in self.tasks}

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self._load(self.sample_ids[index])
        return resize_sample(sample, self.image_size, self.resize_targets) if self.image_size is not None else sample

    def _folder(self, modality: str) -> Path:
        if self.layout == "mtan":
            return self.root / self._official / _MTAN_DIRS[modality]
        return self.root / _NYUD_DIRS[modality]

    def _candidates(self, modality: str, sample_id: str) -> list[Path]:
        exts = (".npy",) if self.layout == "mtan" else _NYUD_EXTS[modality]
        return [self._folder(modality) / f"{sample_id}{ext}" for ext in exts]

    def path(self, modality: str, sample_id: str) -> Path:
        """The file holding ``modality`` ('image' or a task) of ``sample_id``; DataError if missing."""
        candidates = self._candidates(modality, sample_id)
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        label = "image" if modality == "image" else f"{modality} label"
        raise DataError(f"{' or '.join(str(c) for c in candidates)}: missing {label} file")

    def _load(self, sample_id: str) -> dict[str, torch.Tensor]:
        image_path = self.path("image", sample_id)
        image = _decode("image", self.layout, image_path)
        size = image.shape[:2]
        self._check_image_size(image_path, size)
        sample = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))}
        for task in self.tasks:
            path = self.path(task, sample_id)
            arr = _convert(task, self.layout, _read(task, path), path, self.num_classes, self.depth_scale)
            _check_target_size(arr, path, task, size)
            sample[task] = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1) if arr.ndim == 3 else arr))
        if "depth" in sample:
            sample["depth"] = sample["depth"].unsqueeze(0)
        return sample

    def check_sample(self, sample_id: str, facts: SampleFacts | None = None) -> SampleFacts:
        """Check one sample's files for what :meth:`__getitem__` would reject, faster: the image is
        verified, not decoded (``.npy`` images are read: they are small); labels, depth and normals
        are read, depth must have a plausible median in metres and normals unit length. Records in
        ``facts`` what the split check needs; a DataError names the last of ``facts.files``."""
        facts = SampleFacts() if facts is None else facts
        image_path = self._checked_path("image", sample_id, facts)
        if image_path.suffix == ".npy":
            size = _image(_read_npy(image_path), image_path).shape[:2]
        else:
            size = verify_image(image_path)
        if self._native_size is None:
            self._native_size = size  # the first readable image sets the split's size
        self._check_image_size(image_path, size)
        for task in self.tasks:
            path = self._checked_path(task, sample_id, facts)
            raw = _read(task, path)
            if task == "segmentation":
                top = _top_class(raw, self.layout)
                facts.top_class = None if top is None else (path, top)
            if task == "normals":  # validated, not normalised: the check keeps nothing
                arr = _valid_normals(raw, path)
                check_unit_normals(arr, path)
            else:
                arr = _convert(task, self.layout, raw, path, self.num_classes, self.depth_scale)
            _check_target_size(arr, path, task, size)
            if task == "depth":
                check_depth(arr, path, self.depth_scale, facts)
        return facts

    def split_problems(self, facts: list[SampleFacts]) -> list[str]:
        """Dataset-level problems seen in the facts of all samples: labels of the other class set
        (13 vs 40), depth in the wrong unit."""
        problems = []
        if "segmentation" in self.tasks:
            other = 40 if self.num_classes == 13 else 13
            problems.append(
                class_count_problem(
                    self._folder("segmentation"),
                    facts,
                    self.num_classes,
                    other,
                    _ID_OFFSET[self.layout],
                    _VOID[self.layout],
                )
            )
        if "depth" in self.tasks:
            problems.append(depth_scale_problem(facts, self.depth_scale))
        return [p for p in problems if p is not None]

    def _checked_path(self, modality: str, sample_id: str, facts: SampleFacts) -> Path:
        """:meth:`path`, recorded in ``facts`` first so that a missing file is named in the report."""
        facts.files.append(self._candidates(modality, sample_id)[0])
        facts.files[-1] = self.path(modality, sample_id)
        return facts.files[-1]

    def _check_image_size(self, image_path: Path, size: tuple[int, int]) -> None:
        """Samples batched at native size (no resize, or evaluation labels) must share the split's size."""
        if (self.image_size is None or not self.resize_targets) and size != self._split_size():
            raise DataError(
                f"{image_path}: size {size[0]}x{size[1]} differs from the split's "
                f"{self._split_size()[0]}x{self._split_size()[1]} (set data.resize to resize)"
            )

    def _split_size(self) -> tuple[int, int]:
        """Native (H, W) every sample must share: that of the first (readable, when checked) image."""
        if self._native_size is None:
            self._native_size = _stored_size(self.path("image", self.sample_ids[0]))
        return self._native_size


def build_nyuv2(cfg: DataConfig, split: str, tasks: tuple[str, ...] | None = None) -> NYUv2:
    """NYU-v2 ``split`` from ``cfg.root``; reads all three tasks unless ``tasks`` narrows them.

    With ``data.resize`` the training split is resized entirely, while val and test resize only the
    image: their labels stay at native resolution, so metrics are computed at label resolution
    (predictions are upsampled to the label size). Not wrapped in MaterializedDataset: the
    full-resolution split would not fit in memory.
    """
    if not cfg.root:
        raise ConfigError("config key 'data.root': NYU-v2 needs the dataset folder, got null")
    return NYUv2(
        cfg.root,
        split,
        layout=cfg.layout,
        tasks=TASKS if tasks is None else tuple(tasks),
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        image_size=tuple(cfg.image_size) if cfg.resize else None,
        resize_targets=split == "train",
        classes=cfg.classes or None,
        depth_scale=cfg.depth_scale,
        skip_bad_samples=cfg.skip_bad_samples,
    )
