from torch import nn

from sparsemtl.models.complexity import analytic_conv_macs, count_macs, count_parameters


def test_macs_and_parameters_match_hand_computed_values():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),  # 8*16*16 outputs x 3*3*3 = 55,296
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),  # 8*8*8 x 9 = 4,608
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),  # 10 x 512 = 5,120
    )
    expected = 55_296 + 4_608 + 5_120
    assert count_macs(model, (16, 16)) == expected
    assert analytic_conv_macs(model, (16, 16)) == expected
    assert count_macs(model, (16, 16), batch=3) == 3 * expected
    assert count_parameters(model) == 3 * 8 * 9 + 16 + (8 * 9 + 8) + (512 * 10 + 10)
    model.train()
    count_macs(model, (16, 16))
    assert model.training  # the training flag is restored
