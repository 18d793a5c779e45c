"""Every setting is documented where users look: docs/settings.md names each field of
`Settings` as its STEPLOG_* variable (the tracing fields as their OTEL_* variables)."""

from __future__ import annotations

import re
from pathlib import Path

from steplog.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
# Fields read from the standard OpenTelemetry variables instead of STEPLOG_*.
OTEL = {
    "otel_traces_exporter": "OTEL_TRACES_EXPORTER",
    "otel_exporter_otlp_protocol": "OTEL_EXPORTER_OTLP_PROTOCOL",
}


def test_every_setting_has_a_row_in_docs_settings() -> None:
    text = DOC.read_text()
    rows = set(re.findall(r"^\| `([A-Z_]+)`", text, re.MULTILINE))
    rows |= set(re.findall(r"`(OTEL_[A-Z_]+)`", text))
    wanted = {OTEL.get(f, f"STEPLOG_{f.upper()}") for f in Settings.__struct_fields__}
    assert sorted(wanted - rows) == []


def test_every_documented_variable_is_a_setting() -> None:
    """No row for a variable steplog does not read (a renamed or removed setting)."""
    rows = set(re.findall(r"^\| `(STEPLOG_[A-Z_]+)`", DOC.read_text(), re.MULTILINE))
    known = {f"STEPLOG_{f.upper()}" for f in Settings.__struct_fields__}
    assert sorted(rows - known) == []
