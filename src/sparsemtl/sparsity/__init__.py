"""Group sparsity: groupings, proximal operators, the proximal optimiser and the report."""

from .groupings import GROUPINGS, GroupStructure, build_grouping, input_channels, matching_convs
from .optim import ProxAdamW
from .prox import block_soft_threshold, group_lasso_prox_, weighted_group_lasso_prox
from .regularizer import REWEIGHTS, group_weights, regularized_param_groups
from .report import LayerSparsity, SparsityReport, sparsity_report
from .slices import GroupSlices

__all__ = [
    "GROUPINGS",
    "GroupSlices",
    "GroupStructure",
    "LayerSparsity",
    "ProxAdamW",
    "REWEIGHTS",
    "SparsityReport",
    "block_soft_threshold",
    "build_grouping",
    "group_lasso_prox_",
    "group_weights",
    "input_channels",
    "matching_convs",
    "regularized_param_groups",
    "sparsity_report",
    "weighted_group_lasso_prox",
]
