"""One click command per module; qcompiler.cli registers the modules named in COMMAND_MODULES."""
