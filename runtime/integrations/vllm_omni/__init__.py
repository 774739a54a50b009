"""qcompile's vllm-omni plugin: vllm-omni's own Wan attention layers follow a full plan.json, cell for cell.

Registered as `qcompile_plan` in the `vllm_omni.general_plugins` entry-point group (pip install
'qcompile[vllm-omni]'); vllm-omni calls `register()` once in every process. It does nothing unless
QCOMPILE_VLLM_OMNI_PLAN names a plan (spawned workers inherit the variable). See docs/vllm-omni-plugin.md.
"""

from __future__ import annotations

import logging
import os

from runtime.lazy import lazy_getattr

logger = logging.getLogger("qcompile.vllm_omni")

PLAN_ENV = "QCOMPILE_VLLM_OMNI_PLAN"
REPORT_DIR_ENV = "QCOMPILE_VLLM_OMNI_REPORT_DIR"

# vllm-omni calls register() in every process: with no plan named it must cost nothing, so the plugin's modules
# (torch, the plan reader) are imported on first use (PEP 562), not here.
_HOMES = {
    "PluginRefusal": "runtime.integrations.vllm_omni.plugin",
    "PluginState": "runtime.integrations.vllm_omni.plugin",
    "activate": "runtime.integrations.vllm_omni.plugin",
    "active_state": "runtime.integrations.vllm_omni.plugin",
    "deactivate": "runtime.integrations.vllm_omni.plugin",
    "read_executed": "runtime.integrations.vllm_omni.executed",
}

__all__ = [
    "PLAN_ENV",
    "REPORT_DIR_ENV",
    "PluginRefusal",
    "PluginState",
    "activate",
    "active_state",
    "deactivate",
    "read_executed",
    "register",
]


__getattr__ = lazy_getattr(__name__, _HOMES, globals())


def register() -> None:
    """The entry point. Without QCOMPILE_VLLM_OMNI_PLAN: nothing. With it: refuse an untested vllm-omni, verify
    the plan, and install the hooks that tag each Wan expert as vllm-omni builds it. Raises PluginRefusal (vllm-omni
    lets an exception inside a plugin function propagate, so the process stops with the message)."""
    plan_path = os.environ.get(PLAN_ENV)
    if not plan_path:
        return
    from runtime.integrations.vllm_omni import vllm_omni_private as omni
    from runtime.integrations.vllm_omni.plugin import PluginRefusal, activate, active_state

    state = active_state()
    if state is not None and state.log.plan_path == plan_path:
        return  # vllm-omni loads general plugins once per process; tolerate a second call all the same
    version = omni.installed_version()
    problem = omni.version_problem(version)
    if problem and (version is None or not omni.untested_allowed()):
        raise PluginRefusal(problem)
    if problem:
        logger.warning("qcompile plan: %s=1, running anyway: %s. Check the executed tables it writes",
                       omni.ALLOW_UNTESTED_ENV, problem)
    state = activate(plan_path, vllm_omni_version=version)
    logger.info("qcompile plan %s (%s, %d steps) active in process %d; executed tables go to %s",
                state.plan.content_hash[:12], state.plan.family_name, state.plan.num_inference_steps, os.getpid(),
                state.log.report_dir)
