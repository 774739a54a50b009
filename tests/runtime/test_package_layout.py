"""How the runtime package is laid out: `import runtime` costs nothing and changes nothing, private diffusers
API is named in one module only, and the runtime core never imports the quality tools built above it."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO_ROOT
from tests.runtime.conftest import recipe

RUNTIME = REPO_ROOT / "runtime"


def _run(code: str, **env: str) -> str:
    import os

    environment = {k: v for k, v in os.environ.items() if k != "QCOMPILE_VLLM_OMNI_PLAN"} | env
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, capture_output=True,
                          text=True, env=environment, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_runtime_imports_neither_torch_nor_diffusers():
    out = _run("""
        import sys
        import runtime
        heavy = sorted(m for m in ("torch", "diffusers") if m in sys.modules)
        from runtime import PlanMismatchError, ExecutionReport  # torch-free names stay torch-free
        print(heavy, sorted(m for m in ("torch", "diffusers") if m in sys.modules))
    """)
    assert out.strip() == "[] []"


@pytest.mark.slow  # imports diffusers in a fresh process
def test_importing_the_runtime_modules_leaves_diffusers_backend_enum_alone():
    out = _run("""
        import runtime, runtime.loading, runtime.shadowing
        from diffusers.models.attention_dispatch import AttentionBackendName
        print("qcompile" in AttentionBackendName._value2member_map_)
        print(runtime.load is runtime.loading.load, runtime.shadow is runtime.shadowing.shadow)
    """)
    assert out.splitlines() == ["False", "True True"]


def test_the_backend_is_registered_with_diffusers_by_the_first_load(i2v_pipe, compile_tiny):
    import runtime
    from runtime.diffusers_private import AttentionBackendName
    from runtime.dispatch import QCOMPILE_BACKEND_VALUE, qcompile_backend

    with runtime.load(i2v_pipe, compile_tiny(recipe()), backend="reference"):
        member = AttentionBackendName(QCOMPILE_BACKEND_VALUE)
        assert member is qcompile_backend()
        assert i2v_pipe.transformer.blocks[0].attn1.processor._attention_backend is member


def test_vllm_omni_entry_point_without_a_plan_imports_neither_torch_nor_diffusers():
    out = _run("""
        import sys
        from runtime.integrations.vllm_omni import register
        register()
        print(sorted(m for m in ("torch", "diffusers", "runtime.loading") if m in sys.modules))
    """)
    assert out.strip() == "[]"


# Private diffusers (and torch) attributes the runtime relies on; runtime/diffusers_private.py names them all.
PRIVATE_NAMES = ("_attention_backend", "_parallel_config", "_compiled_call_impl", "_current_timestep",
                 "_AttentionBackendRegistry", "_flattened_mesh", "_ulysses_mesh", "_templated_context_parallel",
                 "_member_map_", "_value2member_map_", "_CAN_USE_FLEX_ATTN", "attention_dispatch")


def _attribute_uses(path) -> set[str]:
    """Private names the module reads as attributes, strings or imports (not parameter names)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [a.name for a in node.names]
        else:
            continue
        found |= {p for p in PRIVATE_NAMES for n in names if n == p or n.endswith("." + p) or n.startswith(p)}
    return found


def test_private_diffusers_api_is_used_only_in_diffusers_private():
    leaks = {str(p.relative_to(REPO_ROOT)): sorted(uses) for p in sorted(RUNTIME.rglob("*.py"))
             if p.name != "diffusers_private.py" and (uses := _attribute_uses(p))}
    assert not leaks, f"private diffusers API outside runtime/diffusers_private.py: {leaks}"


def test_check_private_api_covers_every_private_name_it_uses():
    source = (RUNTIME / "diffusers_private.py").read_text(encoding="utf-8")
    check = source[source.index("def check_private_api"):source.index("\ndef ", source.index("def check_private_api") + 1)]
    checked_tuples = ("_REGISTRY_FIELDS", "_ENUM_FIELDS", "_TEMPLATED_KEYWORDS", "_PROCESSOR_ATTRIBUTES",
                      "_CONTEXT_PARALLEL_FIELDS")
    covered = check + "".join(source[source.index(f"{t} = "):source.index(")", source.index(f"{t} = "))]
                              for t in checked_tuples)
    used = {n for n in PRIVATE_NAMES if n in source} - {"attention_dispatch", "_templated_context_parallel"}
    missing = sorted(n for n in used if n not in covered)
    assert not missing, f"check_private_api() does not check {missing}"


def _runtime_imports(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def test_runtime_core_never_imports_the_quality_tools():
    up = {str(p.relative_to(REPO_ROOT)): sorted(m for m in _runtime_imports(p) if m.startswith("runtime.quality"))
          for p in sorted(RUNTIME.rglob("*.py")) if "quality" not in p.parts}
    assert not {k: v for k, v in up.items() if v}, "runtime core imports runtime/quality (the layer above it)"


def test_modules_are_not_named_like_their_functions():
    for name in ("load", "shadow"):
        assert not (RUNTIME / f"{name}.py").exists(), f"runtime/{name}.py would shadow runtime.{name}()"
