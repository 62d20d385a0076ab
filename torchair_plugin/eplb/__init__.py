"""EPLB tools for npu_moe_update_expert: build and convert eplb_tables, plan placements from
load, and report what the op does to the load of every rank.

- ``tables``: builders from phy2log, DeepSeek log2phy/logcnt, vLLM maps (and per-layer stacks),
  inverses; all validated.
- ``planner``: ``plan_placement`` modelling balance_mode 0's and 1's real splits.
- ``workload``: synthetic skewed routing, per-expert load from routing.
- ``load_report``: tokens per physical expert and per rank through the op itself.
- ``io``: routing and table files; ``plot``: PNG chart (matplotlib optional); ``cli``: ``balance``.

The loop inside a compiled model (docs/eplb.md, "The EPLB loop"):
- ``load_recorder``: ``ExpertLoadRecorder``, tokens per physical expert counted on the device.
- ``stable_table``: ``StableEplbTable``, the device table, validated and updated in place.
- ``rank_check``: ``check_same_table``, a digest all-gather naming the ranks that differ.
- ``rebalance_gain``: ``rebalance_gain``, balancedness now and predicted, replicas moved.
- ``formats``: vllm-ascend's expert-map JSON, per-rank one-replica maps, SGLang's replica map.
- ``model_planner``: ``plan_model``, every layer of a model in one vectorised call, move-aware
  with ``previous=`` tables, with placement constraints (one replica per rank, pins, nodes).
"""

from torchair_plugin.eplb.formats import (
    expert_map_phy2log,
    table_from_expert_map,
    table_from_rank_maps,
    table_from_sglang,
    table_to_expert_map,
    table_to_rank_maps,
    table_to_sglang,
)
from torchair_plugin.eplb.io import load_eplb_table, load_routing
from torchair_plugin.eplb.load_recorder import ExpertLoadRecorder
from torchair_plugin.eplb.load_report import (
    SCENARIOS,
    LoadReport,
    ScenarioLoad,
    format_report,
    load_report,
    physical_ranks,
    source_expert_tokens,
)
from torchair_plugin.eplb.model_planner import ModelPlan, plan_model
from torchair_plugin.eplb.planner import Placement, balancedness, expected_loads, plan_placement, replica_shares
from torchair_plugin.eplb.plot import plot_rank_loads
from torchair_plugin.eplb.rank_check import RankMismatchError, check_same_table, table_digest
from torchair_plugin.eplb.rebalance_gain import RebalanceGain, logical_load, rank_loads, rebalance_gain
from torchair_plugin.eplb.stable_table import StableEplbTable
from torchair_plugin.eplb.tables import (
    PADDING,
    table_from_log2phy,
    table_from_phy2log,
    table_from_vllm,
    table_to_log2phy,
    table_to_phy2log,
)
from torchair_plugin.eplb.workload import expert_load, skewed_routing

__all__ = [
    "ExpertLoadRecorder",
    "RankMismatchError",
    "RebalanceGain",
    "StableEplbTable",
    "check_same_table",
    "expert_map_phy2log",
    "logical_load",
    "rank_loads",
    "rebalance_gain",
    "table_digest",
    "table_from_expert_map",
    "table_from_rank_maps",
    "table_from_sglang",
    "table_to_expert_map",
    "table_to_rank_maps",
    "table_to_sglang",
    "PADDING",
    "SCENARIOS",
    "LoadReport",
    "ModelPlan",
    "Placement",
    "ScenarioLoad",
    "balancedness",
    "expected_loads",
    "expert_load",
    "format_report",
    "load_eplb_table",
    "load_report",
    "load_routing",
    "physical_ranks",
    "plan_model",
    "plan_placement",
    "plot_rank_loads",
    "replica_shares",
    "skewed_routing",
    "source_expert_tokens",
    "table_from_log2phy",
    "table_from_phy2log",
    "table_from_vllm",
    "table_to_log2phy",
    "table_to_phy2log",
]
