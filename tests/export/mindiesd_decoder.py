"""An independent decoder of MindIE-SD 3.1.0 online-quantization settings, written from MindIE-SD's documented
semantics (../shared/reference/npu-entry-points.md; mindiesd 3.1.0 quantization/{config,quantize,utils}.py),
NOT from qcompiler.targets.mindiesd.

The Python snippet is executed against a stand-in `mindiesd.quantization` that implements only the
configuration surface (it checks the call contract, it runs no kernel):
- TimestepPolicyConfig(fa_default_strategy="MXFP4" by default); register(step_range: int | list | range,
  strategy, target="w4a4_linear" by default); get_strategy(step, target="w4a4_linear" by default);
- OnlineQuantConfig(quant_type="W8A8_DYNAMIC", fallback_layers, fa_layers, fa_quant_type, timestep_config);
  MXFP8_DYNAMIC is rejected online;
- quantize(model, online_config=...): a module gets FA quantization iff its name, class name or module.Class
  matches fa_layers (fnmatch; braces only with wcmatch) and no fallback pattern maps its name to W16A16;
  each nn.Linear is quantized with quant_type unless a fallback pattern keeps it at W16A16;
- per step: MXFP4_DYNAMIC asks get_strategy(t_idx, target="fa") -> "MXFP4" | "FP8" | "FLOAT" (native);
  FP8_DYNAMIC is FP8 on every step.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import sys
import types

from qcompiler.plan.format import Plan

Cell = tuple[str, str, int, int]
ATTENTION_CLASS = ("WanAttention", "diffusers.models.transformers.transformer_wan.WanAttention")
STRATEGY_OF_DTYPE = {"fp8_e4m3_per_block": "FP8", "mxfp4_e2m1": "MXFP4"}


class TimestepPolicyConfig:
    def __init__(self, default_strategy="dynamic", w4a4_default_strategy="W4A4", fa_default_strategy="MXFP4"):
        assert fa_default_strategy in ("MXFP4", "FP8", "FLOAT")
        self.defaults = {"w8a8_static_linear": default_strategy, "w4a4_linear": w4a4_default_strategy,
                         "fa": fa_default_strategy}
        self.strategies = {target: {} for target in self.defaults}

    def register(self, step_range, strategy, target="w4a4_linear"):
        steps = [step_range] if isinstance(step_range, int) else list(step_range)
        assert all(isinstance(s, int) for s in steps)
        for step in steps:
            self.strategies[target][step] = strategy

    def get_strategy(self, step, target="w4a4_linear"):
        return self.strategies[target].get(step, self.defaults[target])


class OnlineQuantConfig:
    def __init__(self, quant_type="W8A8_DYNAMIC", fallback_layers=None, fa_layers=None, fa_quant_type=None,
                 timestep_config=None):
        assert quant_type in ("W8A8_DYNAMIC", "W8A8_MXFP8", "W4A4_MXFP4_DYNAMIC", "W4A4_MXFP4_DUALSCALE"), quant_type
        assert fa_quant_type in (None, "FP8_DYNAMIC", "MXFP4_DYNAMIC"), f"rejected online: {fa_quant_type}"
        assert all(v in ("W8A8", "W16A16") for v in (fallback_layers or {}).values())
        self.quant_type = quant_type
        self.fallback_layers = dict(fallback_layers or {})
        self.fa_layers = (fa_layers,) if isinstance(fa_layers, str) else tuple(fa_layers or ())
        self.fa_quant_type = fa_quant_type
        self.timestep_config = timestep_config
        assert fa_quant_type is None or self.fa_layers, "fa_layers must be configured when fa_quant_type is set"


@functools.cache
def matches(name: str, pattern: str) -> bool:
    """fnmatch with brace expansion when wcmatch is there (MindIE-SD's rule), plain fnmatch otherwise."""
    if name == pattern:
        return True
    try:
        from wcmatch import fnmatch as wc
    except ImportError:
        return fnmatch.fnmatchcase(name, pattern)
    return wc.fnmatch(name, pattern, flags=wc.BRACE)


def keeps_w16a16(name: str, config: OnlineQuantConfig) -> bool:
    return any(matches(name, p) and algo == "W16A16" for p, algo in config.fallback_layers.items())


def run_snippet(snippet: str, components: tuple[str, ...]) -> dict[str, OnlineQuantConfig]:
    """Execute the exported Python against the stand-in module; the config quantize() got, per component."""
    quantized: dict[str, OnlineQuantConfig] = {}
    module = types.ModuleType("mindiesd.quantization")
    module.OnlineQuantConfig = OnlineQuantConfig
    module.TimestepPolicyConfig = TimestepPolicyConfig
    module.TimestepManager = object()
    module.quantize = lambda model, online_config: quantized.__setitem__(model, online_config)
    package = types.ModuleType("mindiesd")
    package.quantization = module
    saved = {k: sys.modules.get(k) for k in ("mindiesd", "mindiesd.quantization")}
    sys.modules.update({"mindiesd": package, "mindiesd.quantization": module})
    try:
        exec(compile(snippet, "<mindiesd export>", "exec"), {"pipe": types.SimpleNamespace(**{c: c for c in components})})
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
    return quantized


def configs_from_json(text: str, components: tuple[str, ...]) -> dict[str, OnlineQuantConfig]:
    """The config each transformer gets from the JSON: every entry of `configs` names the transformers it is
    applied to; a transformer named in no entry (listed in `native_components`) is not quantized."""
    data = json.loads(text)
    configs: dict[str, OnlineQuantConfig] = {}
    for entry in data["configs"]:
        policy_data = entry["timestep_policy_config"]
        policy = TimestepPolicyConfig(**policy_data["init"])
        for call in policy_data["register"]:
            policy.register(call["step_range"], call["strategy"], target=call["target"])
        kwargs = dict(entry["online_quant_config"])
        assert kwargs.pop("timestep_config") == "timestep_policy_config"
        config = OnlineQuantConfig(**kwargs, timestep_config=policy)
        assert entry["components"], "a config must name the transformers it applies to"
        for component in entry["components"]:
            assert component in components, f"{component} is not a transformer of the pipeline"
            assert component not in configs, f"{component} is named by two configs"
            configs[component] = config
    assert sorted(data["native_components"]) == sorted(set(components) - set(configs))
    return configs


def decode(plan: Plan, configs: dict[str, OnlineQuantConfig], routing: tuple[str, ...]) -> set[Cell]:
    """The cells MindIE-SD quantizes (with the plan dtype's strategy) when steps are served as `routing` says."""
    expected = STRATEGY_OF_DTYPE[plan.data["dtype"]]
    attached: dict[int, set[tuple[str, int]]] = {}  # id(config) -> (kind, layer) with FA quantization
    for component, config in configs.items():
        if config.fa_quant_type is None or id(config) in attached:
            continue
        attached[id(config)] = {
            (kind, layer)
            for kind in plan.family.kinds
            for layer in range(plan.family.num_layers(component, kind))
            if any(matches(candidate, p) for candidate in (plan.family.module_path(component, kind, layer), *ATTENTION_CLASS)
                   for p in config.fa_layers)
            and not keeps_w16a16(plan.family.module_path(component, kind, layer), config)
        }
    cells = set()
    for step, component in enumerate(routing):
        config = configs.get(component)
        if config is None or config.fa_quant_type is None:
            continue
        if config.fa_quant_type == "FP8_DYNAMIC":
            strategy = "FP8"
        else:
            strategy = config.timestep_config.get_strategy(step, target="fa") if config.timestep_config else "MXFP4"
        if strategy == "FLOAT":
            continue
        assert strategy == expected, f"step {step} runs {strategy}, the plan's dtype needs {expected}"
        cells |= {(component, kind, step, layer) for kind, layer in attached[id(config)]
                  if layer < plan.family.num_layers(component, kind)}
    return cells
