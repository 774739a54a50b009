"""`qcompile report`: what a plan costs in quality and what it should save, from two same-seed pipeline runs.

Run 1 is the stock pipeline (no hooks): the native reference. Run 2 has the plan loaded with an observer: every
FP8 call also computes native attention on the same q/k/v and records the error (runtime.call_record). So
per-call errors are errors of the FP8 call itself, while the end-to-end PSNR/SSIM include the compounding
of all FP8 calls through the denoising loop.

The attention-time saving is an ESTIMATE for the target: FP8 share of attention FLOPs at the real model's
reference shapes x (1 - quantized/BF16 time ratio). The default ratio is the plan dtype's measured speed factor
(qcompiler/formats/<dtype>.py): for FP8 the seed's NPU measurement (Wan2.2 I2V 1280x720, 61 frames, 4 steps: flash
attention 6.81 s -> 5.43 s, i.e. FP8 takes 0.797x the time); MX and INT8 have none yet, so no estimate is made.
"""

from __future__ import annotations

import json
import platform
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import qcompiler
from qcompiler.compile.resolve import predict_expert_schedule
from qcompiler.families import Family, get_family
from qcompiler.families.model import AttentionKind
from qcompiler.fileio import write_text_atomically
from qcompiler.formats import DEFAULT_FORMAT, Numerics, get_format, speed_factor
from qcompiler.numerics import MXFP4_SEQUENCE_MULTIPLE
from qcompiler.plan.format import PLAN_FORMAT, Plan, content_sha256
from qcompiler.schemas import first_violation
from qcompiler.stats import plan_cost
from runtime.backends import resolve_quantized_backend
from runtime.call_record import CallRecord
from runtime.loading import load
from runtime.metrics import PSNR_CAP_DB, psnr, ssim
from runtime.quality.pipelines import (
    DEFAULT_PROMPT,
    FlopCounter,
    FrameSettings,
    PipelineLoadError,
    attention_tokens,
    call_kwargs,
    detect_variant,
    load_pipeline,
    progress_bar,
    progress_kwargs,
    run_frames,
)
from runtime.quality.render import draw_error_heatmap, draw_plan_heatmap, render_markdown

REPORT_FORMAT = 1
# FP8 attention time / native (BF16) attention time for the same work: qcompiler/formats/fp8_e4m3_per_block.py.
DEFAULT_THROUGHPUT_RATIO = speed_factor(DEFAULT_FORMAT)
WORST_STEPS = 3
WORST_LAYERS = 5
# The dtype whose kernel attends to zero padding (MindIE-SD 3.1.0 MXFP4QuantFA; runtime/quant/mx.py), and the
# padded share of the keys above which the report says the error mostly comes from that padding.
PADDED_DTYPE = "mxfp4_e2m1"
PADDING_NOTE_SHARE = 0.5


@dataclass(frozen=True)
class ReportOptions:
    """How to run a report. `backend`: "auto" (an NPU entry point where present, else the CPU reference),
    or any name in runtime.backends.registry. `throughput_ratio`: quantized attention time / BF16 attention time on
    the target; None: the plan dtype's measured factor (qcompiler/formats/), no estimate where none is known."""

    pipeline: str = "tiny"
    seed: int = 0
    prompt: str = DEFAULT_PROMPT
    backend: str = "auto"
    throughput_ratio: float | None = None
    frames: FrameSettings = field(default_factory=FrameSettings)
    progress: bool = True


def retarget_plan(plan: Plan, variant: str | None) -> Plan:
    """The same decisions laid over another variant of the plan's family (e.g. a real-model plan on the tiny
    pipeline). Sound because a variant keeps the components, layer counts and attention kinds, which are all
    a table is indexed by; widths, scheduler shift and so the predicted expert schedule are the variant's."""
    family = get_family(plan.family_name, variant)
    data = plan.to_dict()
    for component in family.component_names:
        for kind in family.kinds:
            if len(plan.table(component, kind)[0]) != family.num_layers(component, kind):
                raise PipelineLoadError(f"{component} has another layer count in variant {variant!r}; recompile")
    data["plan_format"] = PLAN_FORMAT  # the family record below is format 2
    data["family"] = family.structure()
    data["expert_schedule"] = predict_expert_schedule(family, plan.num_inference_steps)
    data["content_sha256"] = content_sha256(data)
    return Plan.from_dict(data)


def pick_backend(requested: str, plan: Plan) -> str:
    """`auto` means the real kernel where it runs, else the emulation: a report is about numerics."""
    if requested != "auto":
        return requested
    backend, _ = resolve_quantized_backend("auto", Numerics.from_plan(plan))
    return backend.name if backend is not None else "reference"


def _stats(values: Iterable[float], worst: Callable[[Iterable[float]], float]) -> dict[str, float]:
    values = list(values)
    return {"mean": sum(values) / len(values), "worst": worst(values)}


def _error_stats(records: list[CallRecord]) -> dict[str, dict[str, float]] | None:
    if not records:
        return None
    return {
        "cos_sim": _stats((r.cos_sim for r in records), min),
        "rel_l1": _stats((r.rel_l1 for r in records), max),
        "rmse": _stats((r.rmse for r in records), max),
    }


def throughput_ratio(given: float | None, dtype: str) -> tuple[float | None, str]:
    """The ratio of the estimate and where it comes from: the one given, else the dtype's measured speed factor
    (never another format's: an unmeasured dtype gets no ratio and so no estimate)."""
    if given is not None:
        return given, "given with --throughput-ratio"
    factor = speed_factor(dtype)
    if factor is None:
        return None, f"no measured speed factor for {dtype}"
    return factor, f"default from {get_format(dtype).speed_factor_source}"


def target_flop_share(plan: Plan) -> tuple[float, str]:
    """FP8 share of attention FLOPs at the REAL model's reference shapes (the family without variant)."""
    cost = plan_cost(plan, get_family(plan.family_name))
    return cost.flop_share, str(cost.shapes_description)


def _cells(plan: Plan, execution: dict, flops_per_call: Callable[[str, str], int], quantized_name: str | None,
           records: list[CallRecord]) -> list[dict[str, Any]]:
    by_cell: dict[tuple, list[CallRecord]] = defaultdict(list)
    for record in records:
        by_cell[(record.component, record.kind, record.step, record.layer)].append(record)
    cells = []
    for component, kinds in execution["cells"].items():
        for kind, rows in kinds.items():
            for step, row in enumerate(rows):
                for layer, backends in enumerate(row):
                    calls = sum(backends.values())
                    if not calls:
                        continue
                    fp8_calls = backends.get(quantized_name, 0) if quantized_name else 0
                    cell_records = by_cell.get((component, kind, step, layer), [])
                    errors = _error_stats(cell_records)
                    cells.append({
                        "component": component, "kind": kind, "step": step, "layer": layer,
                        "planned": "fp8" if plan.is_quantized(component, kind, step, layer) else "native",
                        "calls": calls, "fp8_calls": fp8_calls,
                        "flops": calls * flops_per_call(component, kind),
                        "cos_sim": errors["cos_sim"] if errors else None,
                        "rel_l1": errors["rel_l1"] if errors else None,
                        "rmse": errors["rmse"] if errors else None,
                    })
    return cells


def _worst(records: list[CallRecord], key: Callable[[CallRecord], tuple], fields: tuple[str, ...], count: int) -> list:
    groups: dict[tuple, list[CallRecord]] = defaultdict(list)
    for record in records:
        groups[key(record)].append(record)
    ranked = sorted(groups.items(), key=lambda item: (min(r.cos_sim for r in item[1]), item[0]))
    return [
        {**dict(zip(fields, group, strict=True)),
         "cos_sim_worst": min(r.cos_sim for r in members), "rel_l1_worst": max(r.rel_l1 for r in members),
         "calls": len(members)}
        for group, members in ranked[:count]
    ]


class SequenceLengths:
    """The longest query and key/value token counts each (component, kind) attention module sees (forward
    pre-hooks, as FlopCounter reads them): the MXFP4 padding note needs them."""

    def __init__(self, pipe, family: Family):
        self.tokens: dict[str, dict[str, int]] = {}
        self._handles = []
        for name in family.component_names:
            model = getattr(pipe, name)
            for kind in family.kinds:
                for layer in range(family.num_layers(name, kind)):
                    module = model.get_submodule(family.module_path(name, kind, layer))
                    self._handles.append(module.register_forward_pre_hook(
                        self._hook(f"{name}/{kind}", family.kind(kind)), with_kwargs=True))

    def _hook(self, key: str, spec: AttentionKind):
        def record(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            context = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
            q_tokens, kv_tokens = attention_tokens(spec, hidden, context)
            seen = self.tokens.setdefault(key, {"query": 0, "kv": 0})
            seen["query"] = max(seen["query"], q_tokens)
            seen["kv"] = max(seen["kv"], kv_tokens)
        return record

    def __enter__(self) -> SequenceLengths:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()


def padding_note(dtype: str, tokens: dict[str, dict[str, int]]) -> str | None:
    """Why an MXFP4 report on short sequences shows large errors: the kernel attends to its zero padding."""
    if dtype != PADDED_DTYPE or not tokens:
        return None
    multiple = MXFP4_SEQUENCE_MULTIPLE
    padded = {key: (-seen["kv"]) % multiple / (seen["kv"] + (-seen["kv"]) % multiple)
              for key, seen in tokens.items() if seen["kv"]}
    heavy = {key: share for key, share in padded.items() if share > PADDING_NOTE_SHARE}
    if not heavy:
        return None
    listed = ", ".join(f"{key} {tokens[key]['kv']} keys ({share:.0%} padding)" for key, share in sorted(heavy.items()))
    return (f"MXFP4 zero-pads every sequence to a multiple of {multiple} tokens and attends to the padded zero "
            f"keys, as MindIE-SD 3.1.0's MXFP4QuantFA does (runtime/quant/mx.py). This run's sequences are far "
            f"shorter than {multiple} ({listed}), so most of the error of its MXFP4 calls comes from that "
            f"padding, not from MXFP4 rounding; at the real model's sequence lengths (thousands of tokens) the "
            f"padding is a small share of the keys.")


def threads() -> dict[str, int]:
    """torch's CPU thread counts: results on CPU depend on them (reduction order), so a report records them."""
    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}


def versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {"qcompile": qcompiler.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def build_report(plan: Plan, options: ReportOptions, pipe: Any = None) -> dict[str, Any]:
    """Run native then planned (same seed) and return the report dict (schemas/report.schema.json, minus
    `files`, which write_report adds). `pipe`: an already loaded pipeline to reuse (tests, benchmarks)."""
    if options.throughput_ratio is not None and options.throughput_ratio <= 0:
        raise ValueError("the quantized/BF16 throughput ratio must be positive")
    if pipe is None:
        pipe = load_pipeline(options.pipeline, plan.family_name)
    variant = detect_variant(pipe, plan.family_name)
    compiled = plan
    if variant != plan.variant:
        plan = retarget_plan(plan, variant)
    steps = plan.num_inference_steps
    backend = pick_backend(options.backend, plan)
    frames = options.frames.resolved(pipe, plan.family)

    records: list[CallRecord] = []
    with progress_bar(2 * steps, options.progress, "qcompile report") as bar, \
            FlopCounter(pipe, plan.family) as counter, SequenceLengths(pipe, plan.family) as lengths:
        kwargs = call_kwargs(pipe, spec=options.pipeline, seed=options.seed, prompt=options.prompt, steps=steps,
                             frames=frames)
        start = time.perf_counter()
        native = run_frames(pipe, {**kwargs, **progress_kwargs(pipe, bar, steps)})
        native_s = time.perf_counter() - start
        kwargs = call_kwargs(pipe, spec=options.pipeline, seed=options.seed, prompt=options.prompt, steps=steps,
                             frames=frames)
        with load(pipe, plan, backend=backend) as handle:
            handle.set_observer(records.append)
            start = time.perf_counter()
            planned = run_frames(pipe, {**kwargs, **progress_kwargs(pipe, bar, steps)})
            plan_s = time.perf_counter() - start
            execution = handle.report()
    execution_dict = execution.to_dict()
    quantized_name = execution.quantized_backend
    cells = _cells(plan, execution_dict, counter.flops, quantized_name, records)

    calls_total = sum(c["calls"] for c in cells)
    calls_fp8 = sum(c["fp8_calls"] for c in cells)
    flops_total = sum(c["flops"] for c in cells)
    flops_fp8 = sum(c["fp8_calls"] * counter.flops(c["component"], c["kind"]) for c in cells)
    share, shapes = target_flop_share(plan)
    ratio, ratio_source = throughput_ratio(options.throughput_ratio, plan.data["dtype"])
    identical = bool(torch.equal(native, planned))
    value = psnr(planned, native)
    return {
        "report_format": REPORT_FORMAT,
        "producer": {"name": "qcompile", "version": qcompiler.__version__},
        "plan": {
            "recipe": (plan.data.get("recipe") or {}).get("name", ""),
            "content_sha256": compiled.content_hash,
            "family": plan.family_name,
            "variant": compiled.variant,
            "run_as_variant": plan.variant,
            "num_inference_steps": steps,
            "dtype": plan.data["dtype"],
            "numerics": dict(plan.numerics),
        },
        "measured": {
            "pipeline": options.pipeline, "backend": quantized_name or backend, "device": str(pipe.device),
            "seed": options.seed, "prompt": options.prompt, "height": frames.height,
            "width": frames.width, "num_frames": frames.recorded_frames,
            "guidance_scale": frames.guidance_scale, "versions": versions(), "threads": threads(),
            "attention_tokens": lengths.tokens,
            "elapsed_s": {"native": native_s, "plan": plan_s},
            "shapes_varied": [f"{c}/{k}" for c, k in counter.varied()],
        },
        "execution": {
            "matches_plan": execution_dict["matches_plan"],
            "schedule_matches_plan": execution_dict["schedule_matches_plan"],
            "observed_schedule": execution_dict["observed_schedule"],
            "expert_schedule": execution_dict["expert_schedule"],
            "fallback_calls": execution_dict["fallback_calls"],
            "packed_calls": sum(n for kinds in execution_dict["packed_calls"].values() for n in kinds.values()),
        },
        "summary": {
            "calls": {"total": calls_total, "fp8": calls_fp8, "share": calls_fp8 / calls_total if calls_total else 0.0},
            "flops": {"total": flops_total, "fp8": flops_fp8, "share": flops_fp8 / flops_total if flops_total else 0.0},
            "per_call_error": _error_stats(records),
            "notes": [note for note in (padding_note(plan.data["dtype"], {
                key: seen for key, seen in lengths.tokens.items()
                if key in {f"{r.component}/{r.kind}" for r in records}}),) if note],
            "worst_steps": _worst(records, lambda r: (r.step,), ("step",), WORST_STEPS),
            "worst_layers": _worst(records, lambda r: (r.component, r.kind, r.layer),
                                   ("component", "kind", "layer"), WORST_LAYERS),
            "end_to_end": {
                "psnr_db": value, "psnr_cap_db": PSNR_CAP_DB, "identical": identical,
                "ssim": ssim(planned, native), "max_abs_diff": float((planned - native).abs().max()),
                "frames": int(native.shape[0] * native.shape[1]),
            },
            "estimate": {
                "kind": "estimate, not measured",
                "throughput_ratio": ratio,
                "throughput_ratio_source": ratio_source,
                "target_flop_share": share,
                "target_shapes": shapes,
                "attention_time_saved": None if ratio is None else share * (1.0 - ratio),
            },
        },
        "cells": cells,
    }


def report_json(report: dict[str, Any]) -> str:
    """Validate against schemas/report.schema.json and serialize deterministically (sorted keys, indent 2)."""
    violation = first_violation("report", report)
    if violation:  # a bug in this module, not a user error: say where
        where, message = violation
        raise AssertionError(f"report does not match schemas/report.schema.json at {where}: {message}")
    return json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_report(report: dict[str, Any], plan: Plan, outdir: Path) -> dict[str, Any]:
    """Write report.json, report.md and the heatmaps into `outdir`; returns the report with `files` filled."""
    outdir.mkdir(parents=True, exist_ok=True)
    steps = plan.num_inference_steps
    observed = report["execution"]["observed_schedule"]
    heatmaps = []
    worst_by_cell: dict[tuple[str, str], dict[tuple[int, int], float | None]] = defaultdict(dict)
    for cell in report["cells"]:
        cos = cell["cos_sim"]["worst"] if cell["cos_sim"] is not None else None
        worst_by_cell[(cell["component"], cell["kind"])][(cell["step"], cell["layer"])] = cos
    omitted = []
    for name in plan.component_names:
        served = [bool(seen) and name in seen.split("+") for seen in observed]
        for kind in plan.attention_kinds:
            layers = plan.family.num_layers(name, kind)
            table = plan.table(name, kind)
            size = {"steps": steps, "layers": layers}
            # An all-native table, or one with no quantized call run, draws a panel of one colour: say it instead.
            if not any(any(row) for row in table):
                omitted.append({"component": name, "kind": kind, "what": ["plan", "error"],
                                "reason": "native on every step and layer"})
                continue
            plan_file = f"plan_{name}_{kind}.png"
            draw_plan_heatmap(outdir / plan_file, f"plan: {name} / {kind} (rows: steps, columns: layers)",
                              table, served, dtype=plan.dtype)
            heatmaps.append({"component": name, "kind": kind, "what": "plan", "file": plan_file, **size})
            if not any(cos is not None for cos in worst_by_cell[(name, kind)].values()):
                omitted.append({"component": name, "kind": kind, "what": ["error"],
                                "reason": "no quantized call ran (its quantized cells are on steps it did not serve)"})
                continue
            error_file = f"error_{name}_{kind}.png"
            draw_error_heatmap(outdir / error_file, f"worst per-call 1 - cos-sim: {name} / {kind}", steps, layers,
                               worst_by_cell[(name, kind)])
            heatmaps.append({"component": name, "kind": kind, "what": "error", "file": error_file, **size})
    report = {**report, "files": {"json": "report.json", "markdown": "report.md", "heatmaps": heatmaps,
                                  "omitted": omitted}}
    write_text_atomically(outdir / "report.md", render_markdown(report))
    write_text_atomically(outdir / "report.json", report_json(report))
    return report
