"""``celebamask``: CelebAMask-HQ face parsing + CelebA attributes, via a one-off preparation step.

The release (``CelebAMask-HQ/``) stores 1024x1024 JPEGs, 512x512 per-part binary masks and text
annotation files. :func:`prepare_celebamask` turns it once into a small, fixed-size folder::

    out/images/<idx>.png      RGB, resized to ``size`` (bilinear)
    out/labels19/<idx>.png    merged 19-class map in the official order (nearest)
    out/labels3/<idx>.png     the same map through a 19 -> 3 mapping (THREE_CLASS_MAPPING by default)
    out/attributes.json       {"names": [40 CelebA names], "values": {"<idx>": [40 x 0/1]}}
    out/splits/{train,val,test}.txt   HQ ids, one per line
    out/info.json             size, label source and the 3-class mapping used

:class:`CelebAMaskHQ` reads one split of that folder. Samples follow the library format:
``image`` float32 (3,H,W) in [0,1], ``segmentation`` int64 (H,W) (every pixel labelled, so
``IGNORE_INDEX`` never occurs), and one float32 scalar (0. or 1.) per requested attribute under its
lowercase name (``male``, ``smiling``, ``arched_eyebrows``, ``eyeglasses``, ...).

Labels come either from the per-part masks ``CelebAMask-HQ-mask-anno/<k // 2000>/<k:05d>_<part>.png``
(global k; a missing file is an empty part; read as ``convert('L') > 0``; parts painted in the
official order, later ones overwrite earlier ones) or from already-merged maps in the official
order (``CelebAMask-HQ-mask/<k>.png`` as written by g_mask.py, or any folder passed as ``merged``).
Merged maps in another order (e.g. zllrunning/face-parsing.PyTorch) must be converted first: a PNG
does not say which order it uses.

Splits: the official split is CelebA's ``list_eval_partition.txt`` (0/1/2 = train/val/test) joined
on ``orig_file`` of ``CelebA-HQ-to-CelebA-mapping.txt`` (24183 / 2993 / 2824). Without the partition
file the same split is rebuilt from CelebA's fixed file-number boundaries (files 1..162770 train,
162771..182637 val, 182638.. test, with file number = orig_idx + 1). The official g_partition.py
compares the 0-based orig_idx with those 1-based boundaries and so is off by one at both edges.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..config import ConfigError, DataConfig
from ..errors import DataError, one_line
from ..tasks.spec import TaskSpec
from .sample_check import SampleFacts, class_count_problem, verify_image
from .samples import keep_loadable, read_image, resize_sample
from .split_lists import split_ids

PARTS = (
    "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth", "u_lip", "l_lip",
    "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)  # fmt: skip
"""The 18 part names in the official merge order (g_mask.py); class id = position + 1."""
CLASS_NAMES_19 = ("background", *PARTS)
CLASS_NAMES_3 = ("background", "hair", "skin")
ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip
"""The 40 CelebA attributes in file order (line 2 of CelebAMask-HQ-attribute-anno.txt)."""
DEFAULT_ATTRIBUTES = ("Male", "Smiling", "Arched_Eyebrows", "Eyeglasses")
SPLITS = ("train", "val", "test")
PARTITION_BOUNDS = (162771, 182638)
"""First 1-based CelebA file number of val and of test in list_eval_partition.txt."""
MASK_SIZE = 512

_B, _H, _S = range(3)
THREE_CLASS_MAPPING: dict[int, int] = {
    0: _B,  # background
    1: _S, 2: _S, 3: _S, 4: _S, 5: _S, 6: _S, 7: _S, 8: _S, 9: _S, 10: _S, 11: _S, 12: _S,
    # skin nose eye_g l_eye r_eye l_brow r_brow l_ear r_ear mouth u_lip l_lip
    13: _H,  # hair
    14: _B,  # hat
    15: _S,  # ear_r (earring)
    16: _S,  # neck_l (necklace)
    17: _S,  # neck
    18: _B,  # cloth
}  # fmt: skip
"""19-class id -> 3-class id (0 background, 1 hair, 2 skin), the seed paper's three classes.

* skin: the face and everything drawn inside it (skin, nose, eyes, brows, ears, mouth, lips) and
  the neck: "skin" means visible skin of the head and neck, the face-region parts are only finer
  labels of it.
* hair: hair only (CelebAMask-HQ labels beards as skin; there is no beard part).
* background: background, cloth and hat, i.e. everything that is neither skin nor hair. The hat
  hides the hair and scalp, so its pixels are not hair either.
* Small accessories worn on the skin go to skin: eye_g (glasses sit on the face; eyes and brows
  painted later already overwrite them), ear_r (earring, on the ear lobe) and neck_l (necklace, on
  the neck). This keeps the face and neck regions free of background holes, like the
  ``synthetic-faces`` stand-in, whose glasses do not change the labels.

Pass another dict to :func:`prepare_celebamask` (``mapping=``) for a different choice.
"""


# ---------------------------------------------------------------- text files


def _lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: missing {what}")
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable {what} ({one_line(exc)})") from None


def _hq_id(name: str, path: Path, lineno: int) -> int:
    stem = name[:-4] if name.endswith(".jpg") else name
    if not stem.isdigit():
        raise DataError(f"{path}:{lineno}: expected an HQ image name '<idx>.jpg', got {name!r}")
    return int(stem)


def read_attributes(path: str | Path) -> tuple[tuple[str, ...], dict[int, list[int]]]:
    """(names, {HQ idx: values as 0/1}) from CelebAMask-HQ-attribute-anno.txt (any whitespace)."""
    path = Path(path)
    lines = _lines(path, "attribute file")
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise DataError(f"{path}: expected a count line and a line of attribute names")
    names = tuple(lines[1].split())
    if not names:
        raise DataError(f"{path}:2: no attribute names")
    values: dict[int, list[int]] = {}
    for lineno, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if len(fields) != len(names) + 1:
            raise DataError(f"{path}:{lineno}: {len(fields) - 1} values, expected {len(names)}")
        if any(v not in ("1", "-1") for v in fields[1:]):
            bad = next(v for v in fields[1:] if v not in ("1", "-1"))
            raise DataError(f"{path}:{lineno}: attribute value {bad!r}, expected 1 or -1")
        idx = _hq_id(fields[0], path, lineno)
        if idx in values:
            raise DataError(f"{path}:{lineno}: duplicate row for {fields[0]}")
        values[idx] = [int(v == "1") for v in fields[1:]]
    count = int(lines[0].strip())
    if count != len(values):
        warnings.warn(f"{path}: count line says {count} but {len(values)} rows follow", stacklevel=2)
    return names, values


def read_mapping(path: str | Path) -> dict[int, tuple[int, str]]:
    """{HQ idx: (0-based orig_idx, 1-based orig_file)} from CelebA-HQ-to-CelebA-mapping.txt.

    The ``idx orig_idx orig_file`` header line is optional.
    """
    path = Path(path)
    rows: dict[int, tuple[int, str]] = {}
    for lineno, line in enumerate(_lines(path, "mapping file"), start=1):
        fields = line.split()
        if fields[0] == "idx":
            continue
        if len(fields) != 3 or not fields[0].isdigit() or not fields[1].isdigit():
            raise DataError(f"{path}:{lineno}: expected 'idx orig_idx orig_file', got {line.strip()!r}")
        if int(fields[0]) in rows:
            raise DataError(f"{path}:{lineno}: second row for HQ image {fields[0]}; expected one row per image")
        rows[int(fields[0])] = (int(fields[1]), fields[2])
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def read_partition(path: str | Path) -> dict[str, int]:
    """{CelebA file name: 0/1/2} from CelebA's list_eval_partition.txt."""
    path = Path(path)
    rows: dict[str, int] = {}
    for lineno, line in enumerate(_lines(path, "partition file"), start=1):
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(f"{path}:{lineno}: expected '<file>.jpg 0|1|2', got {line.strip()!r}")
        if fields[0] in rows:
            raise DataError(f"{path}:{lineno}: second row for {fields[0]}; expected one row per image")
        rows[fields[0]] = int(fields[1])
    return rows


def partition_of(orig_idx: int) -> int:
    """0/1/2 (train/val/test) of CelebA image ``orig_idx`` (0-based) from the fixed CelebA boundaries."""
    number = orig_idx + 1
    return 0 if number < PARTITION_BOUNDS[0] else 1 if number < PARTITION_BOUNDS[1] else 2


def official_splits(
    ids: list[int],
    mapping: dict[int, tuple[int, str]],
    partition: dict[str, int] | None = None,
    mapping_path: str | Path = "CelebA-HQ-to-CelebA-mapping.txt",
    partition_path: str | Path = "list_eval_partition.txt",
) -> dict[str, list[int]]:
    """HQ ids per split, by the partition file joined on orig_file, else by :func:`partition_of`;
    the paths name the files in messages."""
    splits: dict[str, list[int]] = {s: [] for s in SPLITS}
    for idx in ids:
        if idx not in mapping:
            raise DataError(f"{mapping_path}: no row for HQ image {idx}")
        orig_idx, orig_file = mapping[idx]
        if partition is None:
            part = partition_of(orig_idx)
        elif orig_file in partition:
            part = partition[orig_file]
        else:
            raise DataError(f"{partition_path}: no row for {orig_file} (HQ image {idx})")
        splits[SPLITS[part]].append(idx)
    return splits


# ---------------------------------------------------------------- label maps


def merge_parts(anno_root: str | Path, idx: int) -> np.ndarray:
    """(512,512) uint8 19-class map of HQ image ``idx`` from its per-part masks, official order."""
    folder = Path(anno_root) / str(idx // 2000)
    label = None
    for class_id, part in enumerate(PARTS, start=1):
        path = folder / f"{idx:05d}_{part}.png"
        if not path.is_file():
            continue
        mask = read_image(path, "L") > 0
        if label is None:
            label = np.zeros(mask.shape, np.uint8)
        elif mask.shape != label.shape:
            raise DataError(
                f"{path}: mask is {mask.shape[0]}x{mask.shape[1]}, other parts {label.shape[0]}x{label.shape[1]}"
            )
        label[mask] = class_id
    if label is None:
        raise DataError(f"{folder / f'{idx:05d}_*.png'}: no part mask found for HQ image {idx}")
    return label


def read_merged(path: Path) -> np.ndarray:
    """A merged 19-class map (official order) as (H,W) uint8; DataError on bad ids or shape."""
    if not path.is_file():
        raise DataError(f"{path}: missing merged label map")
    label = read_image(path, None)
    if label.ndim != 2:
        raise DataError(f"{path}: label map has shape {label.shape}, expected (H, W) class ids")
    if label.size and int(label.max()) >= len(CLASS_NAMES_19):
        raise DataError(f"{path}: class id {int(label.max())} out of range 0..{len(CLASS_NAMES_19) - 1}")
    return label.astype(np.uint8)


def check_mapping(mapping: Mapping[int, int], num_classes: int = len(CLASS_NAMES_3)) -> np.ndarray:
    """The mapping as a 256-entry lookup table; ConfigError unless it maps every 19-class id to 0..num_classes-1."""
    missing = [i for i in range(len(CLASS_NAMES_19)) if i not in mapping]
    if missing:
        raise ConfigError(f"CelebAMask-HQ class mapping: no target for 19-class id {missing[0]}")
    bad = {k: v for k, v in mapping.items() if not 0 <= int(v) < num_classes}
    if bad:
        key = next(iter(bad))
        raise ConfigError(f"CelebAMask-HQ class mapping: {key} -> {bad[key]}, expected 0..{num_classes - 1}")
    lut = np.zeros(256, np.uint8)
    for src, dst in mapping.items():
        lut[int(src)] = int(dst)
    return lut


def remap(label: np.ndarray, mapping: Mapping[int, int] = THREE_CLASS_MAPPING) -> np.ndarray:
    """19-class map -> mapped map (uint8), e.g. to the three classes background / hair / skin."""
    return check_mapping(mapping)[label]


# ---------------------------------------------------------------- preparation


def _label_source(raw: Path, merged: Path | None) -> tuple[str, Path]:
    if merged is not None:
        if not Path(merged).is_dir():
            raise DataError(f"{merged}: missing merged label folder")
        return "merged", Path(merged)
    for kind, name in (
        ("parts", "CelebAMask-HQ-mask-anno"),
        ("merged", "CelebAMask-HQ-mask"),
        ("merged", "CelebAMaskHQ-mask"),
    ):
        if (raw / name).is_dir():
            return kind, raw / name
    raise DataError(
        f"{raw}: no labels: expected CelebAMask-HQ-mask-anno/ (per-part masks) or CelebAMask-HQ-mask/ (merged)"
    )


def _save(arr: np.ndarray, path: Path, size: int, resample: Image.Resampling) -> None:
    img = Image.fromarray(arr)
    if img.size != (size, size):
        img = img.resize((size, size), resample)
    try:
        img.save(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot write ({one_line(exc)})") from None


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise DataError(f"{path}: cannot write ({one_line(exc)})") from None


def prepare_celebamask(
    raw: str | Path,
    out: str | Path,
    size: int,
    mapping: Mapping[int, int] = THREE_CLASS_MAPPING,
    partition_file: str | Path | None = None,
    limit: int | None = None,
    merged: str | Path | None = None,
) -> dict[str, int]:
    """Write the prepared folder (see the module docstring) from the release folder ``raw``.

    Samples are the rows of the attribute file in file order (the first ``limit`` of them).
    ``merged`` names a folder of already-merged maps ``<idx>.png`` in the official order; without
    it the labels come from ``raw/CelebAMask-HQ-mask-anno`` or else ``raw/CelebAMask-HQ-mask``.
    Returns the number of samples per split and in total.
    """
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise DataError(f"{raw}: missing CelebAMask-HQ folder")
    if size < 1:
        raise ConfigError(f"CelebAMask-HQ size: expected a positive integer, got {size}")
    if limit is not None and limit < 1:
        raise ConfigError(f"CelebAMask-HQ limit: expected a positive integer, got {limit}")
    lut = check_mapping(mapping)
    names, values = read_attributes(raw / "CelebAMask-HQ-attribute-anno.txt")
    mapping_path = raw / "CelebA-HQ-to-CelebA-mapping.txt"
    rows = read_mapping(mapping_path)
    partition = read_partition(partition_file) if partition_file is not None else None
    kind, labels_dir = _label_source(raw, None if merged is None else Path(merged))
    ids = list(values)[:limit] if limit is not None else list(values)
    splits = official_splits(ids, rows, partition, mapping_path, partition_file or "")

    for sub in ("images", "labels19", "labels3", "splits"):
        try:
            (out / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"{out / sub}: cannot create the output folder ({one_line(exc)})") from None
    for idx in ids:
        image_path = raw / "CelebA-HQ-img" / f"{idx}.jpg"
        if not image_path.is_file():
            raise DataError(f"{image_path}: missing image file")
        image = read_image(image_path, "RGB")
        label = merge_parts(labels_dir, idx) if kind == "parts" else read_merged(labels_dir / f"{idx}.png")
        _save(image, out / "images" / f"{idx}.png", size, Image.Resampling.BILINEAR)
        _save(label, out / "labels19" / f"{idx}.png", size, Image.Resampling.NEAREST)
        _save(lut[label], out / "labels3" / f"{idx}.png", size, Image.Resampling.NEAREST)
    for split, members in splits.items():
        _write_text(out / "splits" / f"{split}.txt", "".join(f"{i}\n" for i in members))
        if not members:
            warnings.warn(
                f"{out / 'splits' / f'{split}.txt'}: no {split} sample among the {len(ids)} prepared images; "
                "training needs samples in train, val and test",
                stacklevel=2,
            )
    _write_text(
        out / "attributes.json",
        json.dumps({"names": list(names), "values": {str(i): values[i] for i in ids}}, separators=(",", ":")),
    )
    info = {"size": size, "labels": kind, "mapping": {str(k): int(v) for k, v in sorted(mapping.items())}}
    _write_text(out / "info.json", json.dumps(info, indent=1))
    return {**{s: len(m) for s, m in splits.items()}, "total": len(ids)}


# ---------------------------------------------------------------- the dataset


class CelebAMaskHQ(Dataset):
    """One split of a folder written by :func:`prepare_celebamask`.

    ``classes`` picks ``labels3`` (background / hair / skin) or ``labels19`` (official order).
    ``attributes`` are CelebA names in any case (``"Male"`` or ``"male"``); each becomes a float
    scalar sample entry under its lowercase name. ``image_size`` resizes on load (image bilinear,
    labels nearest). A missing or empty split list, an id listed twice or in two splits fail at
    construction. With ``skip_bad_samples`` every sample is checked once (:meth:`check_sample`) and
    bad ones are dropped and listed in ``skipped``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        classes: int = 3,
        attributes: tuple[str, ...] = ("Male", "Smiling"),
        image_size: tuple[int, int] | None = None,
        skip_bad_samples: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; expected one of train, val, test")
        if classes not in (3, 19):
            raise ConfigError(f"CelebAMask-HQ classes: expected 3 or 19, got {classes!r}")
        self.root = Path(root)
        self.split = split
        self.classes = classes
        self.image_size = tuple(image_size) if image_size is not None else None
        self.sample_ids: list[str] = split_ids({s: self.root / "splits" / f"{s}.txt" for s in SPLITS}, split)
        self._attr_path = self.root / "attributes.json"
        if not self._attr_path.is_file():
            raise DataError(f"{self._attr_path}: missing attribute file (run prepare_celebamask)")
        try:
            table = json.loads(self._attr_path.read_text())
            self._names, self._values = list(table["names"]), dict(table["values"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{self._attr_path}: malformed attribute file ({one_line(exc)})") from None
        lower = {n.lower(): i for i, n in enumerate(self._names)}
        unknown = [a for a in attributes if a.lower() not in lower]
        if unknown:
            raise ConfigError(f"CelebAMask-HQ has no attribute {unknown[0]!r}; available: {', '.join(self._names)}")
        self.attributes = {a.lower(): lower[a.lower()] for a in attributes}
        self.skipped: list[tuple[str, str]] = []
        if skip_bad_samples:
            self.sample_ids, self.skipped = keep_loadable(self.sample_ids, self.check_sample, f"CelebAMask-HQ {split}")

    @property
    def task_specs(self) -> dict[str, TaskSpec]:
        names = CLASS_NAMES_3 if self.classes == 3 else CLASS_NAMES_19
        return {
            "segmentation": TaskSpec("segmentation", "segmentation", len(names), names),
            **{name: TaskSpec(name, "attribute") for name in self.attributes},
        }

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self._load(self.sample_ids[index])
        if self.image_size is not None:
            sample.update(resize_sample({k: sample[k] for k in ("image", "segmentation")}, self.image_size))
        return sample

    def _paths(self, sample_id: str) -> tuple[Path, Path]:
        """(image, label) files of ``sample_id``; DataError if one is missing."""
        image_path = self.root / "images" / f"{sample_id}.png"
        label_path = self.root / f"labels{self.classes}" / f"{sample_id}.png"
        for path, what in ((image_path, "image"), (label_path, "label")):
            if not path.is_file():
                raise DataError(f"{path}: missing {what} file")
        return image_path, label_path

    def _load(self, sample_id: str) -> dict[str, torch.Tensor]:
        image_path, label_path = self._paths(sample_id)
        image = read_image(image_path, "RGB")
        label = read_image(label_path, None)
        self._check_label(label, label_path, image.shape[:2])
        row = self._attribute_row(sample_id)
        sample = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0),
            "segmentation": torch.from_numpy(label.astype(np.int64)),
        }
        for name, column in self.attributes.items():
            sample[name] = torch.tensor(float(row[column]), dtype=torch.float32)
        return sample

    def check_sample(self, sample_id: str, facts: SampleFacts | None = None) -> SampleFacts:
        """Check one sample for what :meth:`__getitem__` would reject, faster (the image is verified,
        not decoded), recording its highest class id in ``facts``; a DataError names the last of
        ``facts.files``."""
        facts = SampleFacts() if facts is None else facts
        facts.files.append(self.root / "images" / f"{sample_id}.png")
        image_path, label_path = self._paths(sample_id)
        size = verify_image(image_path)
        facts.files.append(label_path)
        label = read_image(label_path, None)
        facts.top_class = (label_path, int(label.max())) if label.size else None
        self._check_label(label, label_path, size)
        facts.files.append(self._attr_path)
        self._attribute_row(sample_id)
        return facts

    def split_problems(self, facts: list[SampleFacts]) -> list[str]:
        """Dataset-level problems seen in the facts of all samples: labels of the other class set (3 vs 19)."""
        other = 19 if self.classes == 3 else 3
        problem = class_count_problem(self.root / f"labels{self.classes}", facts, self.classes, other)
        return [problem] if problem is not None else []

    def _check_label(self, label: np.ndarray, path: Path, size: tuple[int, int]) -> None:
        if label.ndim != 2:
            raise DataError(f"{path}: label has shape {label.shape}, expected (H, W)")
        if label.shape != size:
            raise DataError(f"{path}: label is {label.shape[0]}x{label.shape[1]} but its image is {size[0]}x{size[1]}")
        if label.size and int(label.max()) >= self.classes:
            raise DataError(f"{path}: class id {int(label.max())} out of range 0..{self.classes - 1} (data.classes)")

    def _attribute_row(self, sample_id: str) -> list[int]:
        row = self._values.get(sample_id)
        if row is None:
            raise DataError(f"{self._attr_path}: no attributes for sample {sample_id}")
        if not isinstance(row, list) or len(row) != len(self._names) or any(v not in (0, 1) for v in row):
            raise DataError(
                f"{self._attr_path}: attributes of sample {sample_id} must be {len(self._names)} values 0 or 1"
            )
        return row


def build_celebamask(
    cfg: DataConfig, split: str, tasks: tuple[str, ...] | None = None, attributes: tuple[str, ...] = ATTRIBUTE_NAMES
) -> CelebAMaskHQ:
    """CelebAMask-HQ ``split`` from a prepared ``cfg.root``; ``data.classes`` 3 (seed paper,
    the default) or 19.

    All 40 attributes are loaded (they live in one small JSON file), so ``tasks`` can pick any of
    them by lowercase name (the seed used ``male``, ``smiling``, ``arched_eyebrows``, ``eyeglasses``).
    """
    classes = cfg.classes or 3
    if classes not in (3, 19):
        raise ConfigError(f"config key 'data.classes': CelebAMask-HQ has 3 or 19 classes, got {classes}")
    if not cfg.root:
        raise ConfigError("config key 'data.root': CelebAMask-HQ needs the prepared folder, got null")
    return CelebAMaskHQ(
        cfg.root,
        split,
        classes=classes,
        attributes=attributes,
        image_size=tuple(cfg.image_size) if cfg.resize else None,
        skip_bad_samples=cfg.skip_bad_samples,
    )
