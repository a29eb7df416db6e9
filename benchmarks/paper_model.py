"""The paper model shared by the benchmark scripts: resnet50d (output stride 8) with three
DeepLabV3 heads (256 channels, rates 12/24/36, dropout 0.3) for NYU-v2's three tasks."""

from sparsemtl.config import ModelConfig
from sparsemtl.tasks.spec import TaskSpec

SPECS = {
    "segmentation": TaskSpec("segmentation", "segmentation", num_classes=40),
    "depth": TaskSpec("depth", "depth"),
    "normals": TaskSpec("normals", "normals"),
}
PAPER_MODEL = ModelConfig(
    encoder="resnet50d", output_stride=8, head_channels=256, aspp_rates=(12, 24, 36), head_dropout=0.3
)
