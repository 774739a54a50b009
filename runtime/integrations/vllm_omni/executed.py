"""What one served request ran on this rank, as runtime's ExecutionReport (the same table format, the same
`matches_plan()`), logged when the request ends and written to `<report dir>/rank<R>.json` (the last request)
and appended to `<report dir>/rank<R>.jsonl` (every request).

The counts are the decisions the plugin handed to vllm-omni's attention layer, one per attention call: vllm-omni
passes `kv_cache_dtype="fp8"` to its own kernel for an FP8 cell and `"float"` otherwise.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from runtime.integrations.vllm_omni.qcompile_api import (
    FP8,
    NATIVE,
    CellCounts,
    ExecutionReport,
    Plan,
    build_report,
    report_from_dict,
    write_text_atomically,
)

logger = logging.getLogger("qcompile.vllm_omni")

FILE_FORMAT = 1


def quantized_backend_name(kv_cache_dtype: str) -> str:
    return f"vllm-omni kv_cache_dtype={kv_cache_dtype}"


def rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class RequestLog:
    """Counts of the request in progress on this rank, and where its executed table goes."""

    def __init__(self, plan: Plan, *, plan_path: str, report_dir: str, vllm_omni_version: str | None,
                 kv_cache_dtype: str):
        self.plan = plan
        self.plan_path = plan_path
        self.report_dir = Path(report_dir)
        self.vllm_omni_version = vllm_omni_version
        self.quantized_name = quantized_backend_name(kv_cache_dtype)
        self.notes: list[str] = []  # standing notes (numerics vllm-omni fixes, schedule inputs), in every report
        self.counts = {(c, kind): CellCounts(plan.num_inference_steps, plan.family.num_layers(c, kind))
                       for c in plan.component_names for kind in plan.attention_kinds}
        self.served: list[set[str]] = [set() for _ in range(plan.num_inference_steps)]
        self.in_request = False
        self.warmup = False
        self.request_id = ""
        self.unknown_step_calls: dict[str, int] = {}  # str(step) -> calls that ran native for it
        self.outside_calls = 0  # attention calls seen outside a request the plugin saw begin (ran native)
        self.warmup_calls = 0
        self.last_report: ExecutionReport | None = None

    def begin(self, request_id: str, *, warmup: bool) -> None:
        for counts in self.counts.values():
            counts.clear()
        for components in self.served:
            components.clear()
        self.unknown_step_calls = {}
        self.warmup_calls = 0
        self.request_id, self.warmup, self.in_request = request_id, warmup, True

    def count(self, component: str, kind: str, step: int, layer: int, fp8: bool) -> None:
        self.counts[(component, kind)].row(step)[layer][FP8 if fp8 else NATIVE] += 1
        self.served[step].add(component)

    def count_unknown_step(self, step: int | None) -> None:
        key = str(step)
        if key not in self.unknown_step_calls:
            logger.warning("qcompile plan: an attention call at denoising step %s, which the plan (%d steps) does "
                           "not cover, runs native (counted in the executed table's notes)", step,
                           self.plan.num_inference_steps)
        self.unknown_step_calls[key] = self.unknown_step_calls.get(key, 0) + 1

    def count_outside(self, *, warmup: bool) -> None:
        if warmup:
            self.warmup_calls += 1
            return
        if not self.outside_calls:
            logger.warning("qcompile plan: attention ran outside a pipeline request; such calls run native")
        self.outside_calls += 1

    def end(self, finished: bool) -> None:
        self.in_request = False
        if self.warmup:
            logger.info("qcompile plan: the engine's warm-up request ran its %d attention calls native (not a "
                        "served request: no executed table)", self.warmup_calls)
            return
        report = self.report()
        self.last_report = report
        rank, world = rank_and_world()
        if not finished:
            logger.warning("qcompile plan: request %s failed; executed table of what ran before:\n%s",
                           self.request_id, report.format())
            return
        logger.info("qcompile plan %s, rank %d/%d, request %s:\n%s", self.plan.content_hash[:12], rank, world,
                    self.request_id, report.format())
        self.write(report, rank, world)

    def report(self) -> ExecutionReport:
        notes = list(self.notes)
        unknown = sum(self.unknown_step_calls.values())
        if unknown:
            notes.append(f"{unknown} attention calls at steps the plan does not cover ran native "
                         f"(step: calls {self.unknown_step_calls}); they are not in the table")
        if self.outside_calls:
            notes.append(f"{self.outside_calls} attention calls outside a pipeline request ran native (since start)")
        names = dict.fromkeys(self.plan.component_names, self.quantized_name)
        # fallback_reasons stays empty: the plugin never falls back, vllm-omni's kernels raise where they cannot.
        return build_report(
            self.plan, self.counts, names, fallback_reasons={}, pipeline_calls=1,
            observed_schedule=["+".join(sorted(s)) if s else None for s in self.served],
            quantized_backend=self.quantized_name if self.plan.uses_quantized() else None, notes=notes,
        )

    def write(self, report: ExecutionReport, rank: int, world: int) -> Path:
        document = {
            **report.to_dict(),
            "served": {
                "format": FILE_FORMAT,
                "request_id": self.request_id,
                "rank": rank,
                "world_size": world,
                "plan": self.plan_path,
                "plan_sha256": self.plan.content_hash,
                "vllm_omni": self.vllm_omni_version,
                "unknown_step_calls": dict(self.unknown_step_calls),
            },
        }
        self.report_dir.mkdir(parents=True, exist_ok=True)
        path = self.report_dir / f"rank{rank}.json"
        text = json.dumps(document, sort_keys=True, indent=2) + "\n"
        write_text_atomically(path, text)
        with open(self.report_dir / f"rank{rank}.jsonl", "a", encoding="utf-8") as history:
            history.write(json.dumps(document, sort_keys=True) + "\n")
        logger.info("qcompile plan: executed table written to %s", path)
        return path


def read_executed(path: str | os.PathLike[str]) -> tuple[ExecutionReport, dict[str, Any]]:
    """The executed table of the last request a rank served (`<report dir>/rank<R>.json`), and its `served`
    record (request id, rank, plan hash, vllm-omni version). `report.matches_plan()` checks it cell for cell."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    return report_from_dict(document), document["served"]
