"""Predictions of a saved model on image files or on its own test samples, written as pictures,
arrays and a table (``sparsemtl predict``).

Images of any size are resized to the size the model was trained at (bilinear, as the datasets
resize), predicted in batches, and every dense output is resized back to the image's own size
(bilinear, on the raw output, before the task kind decodes it). What is written comes from the
task kinds, never from their names: a dense kind's ``visualise`` gives its picture and
``export_arrays`` any extra files (depth: 16-bit millimetres); image-level (``global``) outputs go
to one table. In the output folder, for an image ``NAME`` (its file stem; test samples are
``test-0000``, ...):

- ``NAME_<task>.png``: the picture of each dense task, at the image's size;
- ``NAME_<task>_<suffix>``: each file of the kind's ``export_arrays`` (``NAME_depth_mm.png``);
- ``NAME_panel.png``: input | each task | image-level values | class legends, side by side;
  test samples add a ground-truth row, and ``NAME_input.png`` (there is no input file);

and once: ``legend-<task>.png`` for every dense task with classes, ``predictions.csv`` (one row per
image, one column per image-level task) and ``predictions.json`` (the same, plus every image's
source, size and files).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, ImageOps
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from ..config import DataConfig
from ..data import build_dataset
from ..data.samples import resize_sample
from ..errors import ConfigError, DataError, one_line
from ..runs import atomic_write, atomic_write_json, atomic_write_text, open_model
from ..runtime import resolve_device
from ..tasks import TaskSpec, get_task

#: File endings looked for inside an input folder (a file named explicitly may be any image).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Height of every picture in a panel, of the caption strip above it, and of a legend line.
TILE_HEIGHT = 160
CAPTION_HEIGHT = 18
LINE_HEIGHT = 15
FONT_SIZE = 12
GAP = 4
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
CSV_NAME = "predictions.csv"
JSON_NAME = "predictions.json"


@dataclass
class _Item:
    """One image to predict: ``image`` is what outputs are mapped back to, ``input_size`` what the
    model sees; test samples carry their targets."""

    name: str
    source: str
    image: Tensor
    input_size: tuple[int, int]
    truth: dict[str, Tensor] | None = None


@dataclass
class PredictResult:
    """Where the predictions went."""

    model: Path
    out_dir: Path
    images: int
    files: list[Path] = field(default_factory=list)


def predict(
    model_path: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    device: str = "cpu",
    batch_size: int = 8,
    samples: int = 0,
    size: tuple[int, int] | None = None,
    progress: bool = True,
) -> PredictResult:
    """Predict every task of the model at ``model_path`` (run directory, checkpoint or pruned
    file) on ``inputs`` (image files and folders of images) and on the first ``samples`` test
    samples of its own dataset, and write the files listed in the module docstring to
    ``out_dir``. ``size`` (H, W) is the model's input size (default: the run's
    ``data.image_size``); ``progress`` shows a bar on a terminal."""
    if batch_size < 1:
        raise ConfigError(f"argument --batch-size: expected an integer >= 1, got {batch_size}")
    if samples < 0:
        raise ConfigError(f"argument --samples: expected an integer >= 0, got {samples}")
    if size is not None and (len(size) != 2 or min(size) < 16):
        raise ConfigError(f"argument --size: expected two integers >= 16 (height, width), got {list(size)}")
    files = image_files(inputs)
    if not files and not samples:
        raise ConfigError("nothing to predict: give image files or folders, or --samples N")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"argument --out: {str(out)!r} is a file; expected a folder")
    opened = open_model(model_path)
    target = resolve_device(device, key="argument --device")
    model = opened.model.to(target).eval()
    input_size = tuple(size or opened.config.data.image_size)
    taken: set[str] = set()
    sources = [_file_items(files, input_size, taken)]
    if samples:
        test_split = _test_split(opened.config.data, opened.specs, samples)
        sources.append(_sample_items(test_split, samples, opened.specs, taken))
    items = itertools.chain.from_iterable(sources)
    writer = _Writer(out, opened.specs)
    with tqdm(total=len(files) + samples, unit="image", desc="predict", disable=None if progress else True) as bar:
        for batch in _batches(items, batch_size):
            for item, values in zip(batch, _predict_batch(model, batch, opened.specs, target)):
                writer.write(item, values)
                bar.update(1)
    writer.finish({"model": str(opened.path), "epoch": opened.epoch, "input_size": list(input_size)})
    return PredictResult(opened.path, out, len(files) + samples, writer.files)


# ---------------------------------------------------------------------------------------- inputs
def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The named files and the images inside the named folders (sorted, not recursive), each
    checked to be a readable image before anything is predicted."""
    files: list[Path] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            found = sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise DataError(
                    f"input folder {str(entry)!r} holds no images; expected files ending in {', '.join(IMAGE_SUFFIXES)}"
                )
            files.extend(found)
        elif entry.is_file():
            files.append(entry)
        else:
            raise DataError(f"input {str(entry)!r} does not exist; expected an image file or a folder of images")
    for path in files:
        try:
            with Image.open(path):
                pass  # reads the header only
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"input {str(path)!r} is not a readable image ({one_line(exc)})") from None
    return files


def load_image(path: Path) -> Tensor:
    """(3, H, W) float RGB in [0, 1], upright as the camera's EXIF orientation says."""
    try:
        with Image.open(path) as img:
            rgb = ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"input {str(path)!r}: corrupt or truncated image ({one_line(exc)})") from None
    return torch.from_numpy(np.asarray(rgb).transpose(2, 0, 1).copy()).float().div_(255.0)


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3``, ... when an earlier input had the same stem."""
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}-{k}"
    taken.add(candidate)
    return candidate


def _file_items(files: list[Path], input_size: tuple[int, int], taken: set[str]) -> Iterator[_Item]:
    for path in files:
        yield _Item(_unique(path.stem, taken), str(path), load_image(path), input_size)


def _test_split(data_config: DataConfig, specs: Mapping[str, TaskSpec], count: int) -> Dataset:
    """The run's own test split, checked to hold ``count`` samples (before anything is written);
    never cached in memory whole, as only ``count`` samples are read."""
    dataset = build_dataset(dataclasses.replace(data_config, cache=False), "test", tuple(specs))
    if count > len(dataset):
        raise ConfigError(
            f"argument --samples: the test split of {data_config.name} has {len(dataset)} samples, asked for {count}"
        )
    return dataset


def _sample_items(dataset: Dataset, count: int, specs: Mapping[str, TaskSpec], taken: set[str]) -> Iterator[_Item]:
    """The first ``count`` test samples at the size the dataset gives them (as evaluation sees
    them), with their targets."""
    for index in range(count):
        sample = dataset[index]
        image = sample["image"].float()
        truth = {name: sample[name] for name in specs}
        name = _unique(f"test-{index:04d}", taken)
        yield _Item(name, f"test sample {index}", image, (image.shape[-2], image.shape[-1]), truth)


# ---------------------------------------------------------------------------------------- the model
def _batches(items: Iterable[_Item], batch_size: int) -> Iterator[list[_Item]]:
    """Consecutive items with the same input size, at most ``batch_size`` at a time."""
    batch: list[_Item] = []
    for item in items:
        if batch and (len(batch) == batch_size or item.input_size != batch[0].input_size):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def _model_input(item: _Item) -> Tensor:
    if tuple(item.image.shape[-2:]) == item.input_size:
        return item.image
    return resize_sample({"image": item.image}, item.input_size)["image"]


def _predict_batch(
    model: torch.nn.Module, batch: list[_Item], specs: Mapping[str, TaskSpec], device: torch.device
) -> list[dict[str, Tensor]]:
    """Decoded outputs (target space, on the CPU) of every item; dense outputs at the item's size."""
    images = torch.stack([_model_input(item) for item in batch]).to(device)
    with torch.no_grad():
        outputs = model(images)
        decoded = []
        for i, item in enumerate(batch):
            values = {}
            for name, spec in specs.items():
                kind = get_task(spec.kind)
                raw = outputs[name][i : i + 1].float()
                size = tuple(item.image.shape[-2:])
                if kind.head == "dense" and tuple(raw.shape[-2:]) != size:
                    raw = F.interpolate(raw, size=size, mode="bilinear", align_corners=False)
                values[name] = kind.decode(raw[0], spec).cpu()
            decoded.append(values)
    return decoded


# ---------------------------------------------------------------------------------------- the files
class _Writer:
    """Writes each item's files as it comes and the folder's table and legends at the end."""

    def __init__(self, out_dir: Path, specs: Mapping[str, TaskSpec]) -> None:
        self.out_dir = out_dir
        self.specs = dict(specs)
        self.kinds = {name: get_task(spec.kind) for name, spec in specs.items()}
        self.image_level = [name for name, kind in self.kinds.items() if kind.head == "global"]
        self.font = _font()
        self.legends = {
            name: _legend_entries(self.kinds[name], spec)
            for name, spec in specs.items()
            if self.kinds[name].head == "dense" and spec.num_classes > 0
        }
        self.files: list[Path] = []
        self.records: list[dict[str, Any]] = []

    def _save(self, name: str, array: np.ndarray) -> str:
        """Write ``array`` as ``name`` (``.npy``: NumPy; otherwise an image PIL encodes by suffix)."""
        path = self.out_dir / name
        if path.suffix == ".npy":
            atomic_write(path, lambda fh: np.save(fh, array))
        else:
            encoding = Image.registered_extensions().get(path.suffix.lower())
            if encoding is None:
                raise ValueError(f"cannot write {name!r}: no image format ends in {path.suffix!r}")
            atomic_write(path, lambda fh: Image.fromarray(array).save(fh, format=encoding))
        self.files.append(path)
        return name

    def write(self, item: _Item, values: Mapping[str, Tensor]) -> None:
        files: dict[str, str] = {}
        scalars: dict[str, float] = {}
        row: list[tuple[str, np.ndarray]] = [("input", _picture(item.image))]
        if item.truth is not None:
            files["input"] = self._save(f"{item.name}_input.png", row[0][1])
        for task, spec in self.specs.items():
            kind = self.kinds[task]
            if kind.head == "global":
                scalars[task] = float(values[task])
                continue
            picture = kind.visualise(values[task], spec)
            if picture is not None:
                files[task] = self._save(f"{item.name}_{task}.png", picture)
                row.append((task, picture))
            for suffix, array in kind.export_arrays(values[task], spec).items():
                files[f"{task}_{suffix}"] = self._save(f"{item.name}_{task}_{suffix}", array)
        if scalars:
            row.append(("image-level", self._text([f"{k}: {v:.3f}" for k, v in scalars.items()])))
        for task, entries in self.legends.items():
            row.append((f"{task} classes", self._legend(entries, TILE_HEIGHT)))
        rows = [row]
        record: dict[str, Any] = {"name": item.name, "source": item.source, "size": list(item.image.shape[-2:])}
        if item.truth is not None:
            rows.append(self._truth_row(item.truth))
            record["truth"] = {t: float(item.truth[t]) for t in self.image_level}
        files["panel"] = self._save(f"{item.name}_panel.png", self._panel(rows))
        self.records.append({**record, "values": scalars, "files": files})

    def _truth_row(self, truth: Mapping[str, Tensor]) -> list[tuple[str, np.ndarray | None]]:
        row: list[tuple[str, np.ndarray | None]] = [("ground truth", None)]
        for task, spec in self.specs.items():
            if task not in self.image_level:
                picture = self.kinds[task].visualise(truth[task], spec)
                if picture is not None:
                    row.append((f"{task} (truth)", picture))
        if self.image_level:
            row.append(("image-level (truth)", self._text([f"{t}: {float(truth[t]):g}" for t in self.image_level])))
        return row

    def finish(self, header: dict[str, Any]) -> None:
        for task, entries in self.legends.items():
            self._save(f"legend-{task}.png", self._legend(entries, None))
        if self.image_level:
            table = io.StringIO()
            table_writer = csv.writer(table, lineterminator="\n")
            table_writer.writerow(["image", "source", *self.image_level])
            for record in self.records:
                values = [f"{record['values'][t]:.6f}" for t in self.image_level]
                table_writer.writerow([record["name"], record["source"], *values])
            atomic_write_text(self.out_dir / CSV_NAME, table.getvalue())
            self.files.append(self.out_dir / CSV_NAME)
        tasks = {name: spec.kind for name, spec in self.specs.items()}
        atomic_write_json(self.out_dir / JSON_NAME, {**header, "tasks": tasks, "images": self.records})
        self.files.append(self.out_dir / JSON_NAME)

    # ------------------------------------------------------------------------------------ drawing
    def _text(self, lines: list[str]) -> np.ndarray:
        """Lines of text on white, :data:`TILE_HEIGHT` high (in columns when they do not fit)."""
        return self._legend([(line, None) for line in lines], TILE_HEIGHT)

    def _legend(self, entries: list[tuple[str, tuple[int, int, int] | None]], height: int | None) -> np.ndarray:
        """Names, each after its colour swatch if it has one: one column, or as many as fit in
        ``height``."""
        per_column = len(entries) if height is None else max(1, (height - 2 * GAP) // LINE_HEIGHT)
        columns = [entries[i : i + per_column] for i in range(0, len(entries), per_column)]
        swatch = LINE_HEIGHT - 3 if any(colour is not None for _, colour in entries) else 0
        indent = swatch + GAP if swatch else 0
        widths = [indent + int(max(self.font.getlength(name) for name, _ in col)) + 2 * GAP for col in columns]
        total_height = height if height is not None else 2 * GAP + per_column * LINE_HEIGHT
        canvas = Image.new("RGB", (sum(widths) + GAP, total_height), WHITE)
        draw = ImageDraw.Draw(canvas)
        x = GAP
        for col, width in zip(columns, widths):
            for k, (name, colour) in enumerate(col):
                y = GAP + k * LINE_HEIGHT
                if colour is not None:
                    draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=colour, outline=BLACK)
                draw.text((x + indent, y - 1), name, fill=BLACK, font=self.font)
            x += width
        return np.asarray(canvas)

    def _panel(self, rows: list[list[tuple[str, np.ndarray | None]]]) -> np.ndarray:
        """Rows of captioned tiles, each picture scaled to :data:`TILE_HEIGHT`; a column is as wide
        as its widest tile."""
        tiles = [[(caption, _fit_height(p) if p is not None else None) for caption, p in row] for row in rows]
        ncols = max(len(row) for row in tiles)
        widths = [0] * ncols
        for row in tiles:
            for c, (caption, tile) in enumerate(row):
                text = int(self.font.getlength(caption))
                widths[c] = max(widths[c], text, tile.size[0] if tile is not None else 0)
        row_height = CAPTION_HEIGHT + TILE_HEIGHT + GAP
        canvas = Image.new("RGB", (sum(widths) + GAP * (ncols + 1), row_height * len(tiles) + GAP), WHITE)
        draw = ImageDraw.Draw(canvas)
        for r, row in enumerate(tiles):
            x, y = GAP, GAP + r * row_height
            for c, (caption, tile) in enumerate(row):
                draw.text((x, y + 2), caption, fill=BLACK, font=self.font)
                if tile is not None:
                    canvas.paste(tile, (x, y + CAPTION_HEIGHT))
                x += widths[c] + GAP
        return np.asarray(canvas)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's own font at :data:`FONT_SIZE` (Pillow >= 10.1), else its fixed-size bitmap font."""
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:
        return ImageFont.load_default()


def _legend_entries(kind: Any, spec: TaskSpec) -> list[tuple[str, tuple[int, int, int]]]:
    """(class name, colour) of every class, the colour taken from the kind's own picture of it."""
    colours = kind.visualise(torch.arange(spec.num_classes).view(1, -1), spec)[0]
    names = spec.class_names or tuple(f"class {k}" for k in range(spec.num_classes))
    return [(name, tuple(int(v) for v in colour)) for name, colour in zip(names, colours)]


def _picture(image: Tensor) -> np.ndarray:
    """(H, W, 3) uint8 of a (3, H, W) image in [0, 1]."""
    return (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _fit_height(picture: np.ndarray) -> Image.Image:
    """``picture`` scaled to :data:`TILE_HEIGHT` high: nearest when enlarging (pixels stay crisp
    and label colours exact), bilinear when shrinking."""
    image = Image.fromarray(picture)
    height, width = picture.shape[:2]
    if height == TILE_HEIGHT:
        return image
    new_width = max(1, round(width * TILE_HEIGHT / height))
    resample = Image.Resampling.NEAREST if height < TILE_HEIGHT else Image.Resampling.BILINEAR
    return image.resize((new_width, TILE_HEIGHT), resample)
