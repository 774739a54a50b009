"""One click command per module; qcompiler.cli.main registers the modules named here (imported on first use)."""

COMMAND_MODULES = ("compile", "lint", "show", "diff", "check", "schema", "families", "export", "patch", "suggest", "report", "calibrate")
