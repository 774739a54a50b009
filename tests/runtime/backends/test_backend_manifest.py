"""qcompiler/backends.json, the torch-free manifest of the backend registrations, is fresh, and the CLI's
`--backend` choices, lint's head-dim check and the docs' table of backends read it."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from qcompiler.backend_table import (
    manifest,
    manifest_text,
    markdown_table,
    parse_manifest,
    quantized_backend_names,
    render_manifest,
)
from qcompiler.cli.main import cli
from qcompiler.cli.run_options import QUANTIZED_BACKEND_NAMES
from runtime.backends import backend_names, backends
from runtime.backends.manifest import DOC_PATH, MANIFEST_PATH, build_manifest, main, stale_files

REFRESH = "python -m runtime.backends.manifest --write"


def test_the_committed_manifest_and_docs_table_are_fresh():
    assert stale_files() == [], f"stale: run `{REFRESH}`"
    assert manifest_text() == build_manifest()
    assert markdown_table() in DOC_PATH.read_text(encoding="utf-8")


def test_the_manifest_records_every_declaration():
    entries = {entry.name: entry for entry in manifest()}
    assert list(entries) == list(backends())
    for name, spec in backends().items():
        assert entries[name] == spec.manifest_entry()
    triton = entries["fp8-triton"]
    assert (triton.dtypes, triton.devices, triton.masks, triton.auto_order, triton.aliases) == (
        ("fp8_e4m3_per_block",), ("cuda",), ("none",), 40, ())
    assert triton.head_dims["fp8_e4m3_per_block"].exactly == (64, 128)
    assert entries["npu-torch-fia"].aliases == ("fp8-npu",) and entries["reference"].auto_order is None
    assert parse_manifest(render_manifest(list(manifest()))) == manifest()


def test_a_new_registration_makes_the_manifest_stale_until_written(made_up, capsys):
    assert MANIFEST_PATH in stale_files() and DOC_PATH in stale_files()
    assert main(["--check"]) == 1
    assert f"backends.json is stale: run `{REFRESH}`" in capsys.readouterr().err
    assert '"name": "made-up"' in build_manifest() and "| `made-up` (alias `made-up-alias`) |" in markdown_table(
        parse_manifest(build_manifest()))


def test_check_passes_on_the_committed_files(capsys):
    assert main(["--check"]) == 0 and capsys.readouterr().err == ""


def test_the_cli_offers_the_manifests_quantized_names():
    assert QUANTIZED_BACKEND_NAMES == quantized_backend_names() == tuple(n for n in backend_names() if n != "native")
    result = CliRunner().invoke(cli, ["report", "plan.json", "--backend", "fp8-gpu"])
    assert result.exit_code == 2
    assert "'fp8-gpu' is not one of 'auto', 'reference', 'npu-quant-attention'" in result.output
    assert "'int8-npu', 'sage-v1', 'sage-sm90', 'fp8-reference', 'fp8-npu'" in result.output and "'native'" not in result.output


def test_the_manifest_and_lints_head_dim_check_need_no_torch():
    code = ("import sys\n"
            "from qcompiler.backend_table import no_backend_reason\n"
            "import qcompiler.cli.run_options\n"
            "print(no_backend_reason('fp8_e4m3_per_block', 12, False))\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'runtime')], 'torch imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("no attention backend runs fp8_e4m3_per_block at head dim 12 (reference, ")
