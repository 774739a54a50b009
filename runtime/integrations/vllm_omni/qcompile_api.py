"""Everything the vllm-omni plugin uses from the rest of qcompile, imported in this one place.

When those modules move, only these imports follow them.
"""

from qcompiler.errors import FamilyError, PlanError, QcompileError
from qcompiler.families import get_family
from qcompiler.fileio import write_text_atomically
from qcompiler.plan.format import Plan, load_plan
from qcompiler.targets.vllm_omni import numerics_notes as vllm_omni_numerics_notes
from runtime.execution_report import FP8, NATIVE, CellCounts, ExecutionReport, build_report, report_from_dict

__all__ = [
    "FP8",
    "NATIVE",
    "CellCounts",
    "ExecutionReport",
    "FamilyError",
    "Plan",
    "PlanError",
    "QcompileError",
    "build_report",
    "report_from_dict",
    "get_family",
    "load_plan",
    "vllm_omni_numerics_notes",
    "write_text_atomically",
]
