"""Everything the vllm-omni plugin uses from the rest of qcompile, imported in this one place.

qcompiler's plan and family modules and runtime's execution report are being moved by other work (plan loading
to qcompiler/plan/, runtime/report.py to runtime/execution_report.py); only these imports follow them.
"""

from qcompiler.errors import FamilyError, PlanError, QcompileError
from qcompiler.export_vllm import _numerics_notes as vllm_omni_numerics_notes
from qcompiler.families import get_family
from qcompiler.plan import Plan, _thaw, load_plan, table_to_rows, write_text_atomically
from runtime.report import FP8, NATIVE, CellCounts, ExecutionReport, executed_char

plan_family_dict = _thaw  # a loaded plan's (frozen) family mapping as plain dicts, to compare with the registry

__all__ = [
    "FP8",
    "NATIVE",
    "CellCounts",
    "ExecutionReport",
    "FamilyError",
    "Plan",
    "PlanError",
    "QcompileError",
    "executed_char",
    "get_family",
    "load_plan",
    "plan_family_dict",
    "table_to_rows",
    "vllm_omni_numerics_notes",
    "write_text_atomically",
]
