import pytest
import timm
import torch

from sparsemtl.config import ConfigError, ModelConfig
from sparsemtl.models import Encoder, build_model
from sparsemtl.tasks.spec import TaskSpec

SPECS = {
    "segmentation": TaskSpec("segmentation", "segmentation", num_classes=5),
    "depth": TaskSpec("depth", "depth"),
    "normals": TaskSpec("normals", "normals"),
    "smiling": TaskSpec("smiling", "attribute"),
}
SMALL = ModelConfig(encoder="resnet10t", head_channels=8, aspp_rates=(1, 2), classifier_channels=(8, 4))


def test_encoder_runs_once_per_forward_and_outputs_have_task_shapes():
    model = build_model(SMALL, SPECS).eval()
    calls = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    out = model(torch.rand(2, 3, 40, 48))
    assert len(calls) == 1
    assert out["segmentation"].shape == (2, 5, 40, 48)
    assert out["depth"].shape == (2, 1, 40, 48)
    assert out["normals"].shape == (2, 3, 40, 48)
    assert out["smiling"].shape == (2, 1)


def test_output_stride_and_single_task():
    model = build_model(SMALL, {"depth": SPECS["depth"]})
    assert model.encoder.stride == 8 and list(model.heads) == ["depth"]
    coarse = build_model(
        ModelConfig(encoder="resnet10t", output_stride=32, head_channels=8, aspp_rates=(1,)), {"depth": SPECS["depth"]}
    )
    assert coarse.encoder.stride == 32
    feats = coarse.encoder(torch.rand(1, 3, 64, 64))
    assert feats.shape[-2:] == (2, 2)


def test_parameter_counts_add_up():
    model = build_model(SMALL, SPECS)
    counts = model.parameter_counts()
    assert counts["total"] == counts["encoder"] + sum(v for k, v in counts.items() if k.startswith("head."))
    with torch.no_grad():
        model.encoder.backbone.conv1[0].weight.zero_()
    assert model.parameter_counts()["nonzero"] == counts["nonzero"] - model.encoder.backbone.conv1[0].weight.numel()


def test_input_normalisation_uses_timm_statistics():
    enc = Encoder("resnet10t")
    assert torch.allclose(enc.mean.flatten(), torch.tensor(enc.backbone.pretrained_cfg["mean"]))


def test_pretrained_weights_load_from_a_local_file(tmp_path):
    reference = timm.create_model("resnet10t")
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    enc = Encoder("resnet10t", pretrained=str(path))
    assert torch.equal(enc.backbone.conv1[0].weight, reference.conv1[0].weight)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Encoder("resnet10t", pretrained=str(tmp_path / "missing.pth"))


def test_unknown_encoder_is_a_config_error():
    with pytest.raises(ConfigError, match="model.encoder"):
        build_model(ModelConfig(encoder="resnet_does_not_exist"), SPECS)


def test_zero_initialised_norm_scales_are_reset_when_training_from_scratch(tmp_path):
    """timm zero-initialises each residual block's last BN scale; that blocks all gradient to the
    branch, and the Adam-metric prox would delete the branch at step 1."""
    raw = timm.create_model("resnet18d", features_only=True)
    assert any(isinstance(m, torch.nn.BatchNorm2d) and not m.weight.any() for m in raw.modules())
    enc = Encoder("resnet18d")
    assert all(m.weight.any() for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d))
    path = tmp_path / "w.pth"
    torch.save(timm.create_model("resnet18d").state_dict(), path)
    loaded = Encoder("resnet18d", pretrained=str(path))  # pretrained weights are kept as they are
    assert any(not m.weight.any() for m in loaded.modules() if isinstance(m, torch.nn.BatchNorm2d))
