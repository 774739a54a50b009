"""Integrations of the qcompile runtime into serving engines (each one an opt-in extra)."""
