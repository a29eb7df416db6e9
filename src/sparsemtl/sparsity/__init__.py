"""Group sparsity: groupings, proximal operators, the proximal optimiser and the report."""

from .channels import (
    ChannelRemovability,
    ChannelSet,
    ChannelSlice,
    channel_sets,
    coupled,
    output_channels,
    removable_channels,
)
from .groupings import GROUPINGS, GroupStructure, build_grouping, input_channels, matching_convs
from .optim import ProxAdamW, ProxSGD
from .penalties import PENALTIES, Penalty
from .prox import block_soft_threshold, group_lasso_prox_, group_mcp_prox, group_mcp_prox_, weighted_group_lasso_prox
from .regularizer import REWEIGHTS, group_weights, regularized_param_groups
from .report import LayerSparsity, SparsityReport, model_sparsity_report, sparsity_report
from .slices import GroupSlices

__all__ = [
    "ChannelRemovability",
    "ChannelSet",
    "ChannelSlice",
    "channel_sets",
    "coupled",
    "output_channels",
    "removable_channels",
    "GROUPINGS",
    "GroupSlices",
    "GroupStructure",
    "LayerSparsity",
    "PENALTIES",
    "Penalty",
    "ProxAdamW",
    "ProxSGD",
    "REWEIGHTS",
    "SparsityReport",
    "block_soft_threshold",
    "build_grouping",
    "group_lasso_prox_",
    "group_mcp_prox",
    "group_mcp_prox_",
    "group_weights",
    "input_channels",
    "matching_convs",
    "model_sparsity_report",
    "regularized_param_groups",
    "sparsity_report",
    "weighted_group_lasso_prox",
]
