"""BatchNorm folding is exact, complete on the ResNet + ASPP model, and leaves the original alone."""

from __future__ import annotations

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from sparsemtl.config import ModelConfig
from sparsemtl.evaluation.fold import fold_batchnorm
from sparsemtl.models import build_model
from sparsemtl.tasks.spec import TaskSpec


def tiny_model() -> nn.Module:
    specs = {
        "segmentation": TaskSpec("segmentation", "segmentation", num_classes=4),
        "depth": TaskSpec("depth", "depth"),
        "smiling": TaskSpec("smiling", "attribute"),
    }
    cfg = ModelConfig(encoder="resnet10t", head_channels=8, aspp_rates=(1, 2), classifier_channels=(8, 4))
    return build_model(cfg, specs)


def randomize_batchnorms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial running stats and affine parameters, so folding is really exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)


def count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def assert_same_outputs(reference: nn.Module, folded: nn.Module, x: torch.Tensor) -> None:
    reference.eval()
    with torch.no_grad():
        expected, actual = reference(x), folded(x)
    expected = expected if isinstance(expected, dict) else {"out": expected}
    actual = actual if isinstance(actual, dict) else {"out": actual}
    assert expected.keys() == actual.keys()
    for key in expected:
        scale = expected[key].abs().max().clamp_min(1e-12)
        assert ((actual[key] - expected[key]).abs().max() / scale) < 1e-5, key


@pytest.mark.parametrize("random_stats", [False, True])
def test_folded_model_matches_eval_model(random_stats: bool) -> None:
    torch.manual_seed(0)
    model = tiny_model()
    if random_stats:
        randomize_batchnorms(model)
    folded = fold_batchnorm(model)
    assert not folded.training
    assert_same_outputs(model, folded, torch.rand(2, 3, 48, 40))


def test_every_batchnorm_of_resnet_aspp_model_is_folded() -> None:
    model = tiny_model()
    folded = fold_batchnorm(model)
    assert count_bn(model) > 0
    assert count_bn(folded) == 0
    identities = sum(type(m) is nn.Identity for m in folded.modules()) - sum(
        type(m) is nn.Identity for m in model.modules()
    )
    assert identities == count_bn(model)


def test_original_model_is_untouched() -> None:
    model = tiny_model()
    randomize_batchnorms(model)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bn_before = count_bn(model)
    fold_batchnorm(model)
    assert model.training and all(m.training for m in model.modules())
    assert count_bn(model) == bn_before
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


class SharedConvOutput(nn.Module):
    """conv1's output feeds its BN and a residual add: folding would change the add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        return self.bn2(self.conv2(torch.relu(self.bn1(y)))) + y


class ReusedBatchNorm(nn.Module):
    """One BN applied after two convs: it cannot be folded into either."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 1)
        self.conv2 = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv1(x)) * self.bn(self.conv2(x))


class InPlaceBetween(nn.Module):
    """An in-place ReLU between conv and BN: the BN reads the conv's tensor, but modified."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.relu(self.conv(x)))


class TimmNormAct(nn.Module):
    """timm's BatchNormAct2d (BN + activation in one module, as in EfficientNet) folds too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = BatchNormAct2d(4, act_layer=nn.SiLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


@pytest.mark.parametrize(
    ("module", "left"), [(SharedConvOutput, 1), (ReusedBatchNorm, 1), (InPlaceBetween, 1), (TimmNormAct, 0)]
)
def test_only_exact_folds_are_made(module: type[nn.Module], left: int) -> None:
    torch.manual_seed(0)
    model = module()
    randomize_batchnorms(model)
    folded = fold_batchnorm(model, torch.rand(1, 3, 16, 16))
    assert count_bn(folded) == left
    assert_same_outputs(model, folded, torch.rand(2, 3, 16, 16))
