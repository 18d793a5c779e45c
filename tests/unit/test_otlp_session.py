"""steplog.otlp.pin_environment: the OTLP/HTTP exporter's session reads the proxies, the
CA bundle and ~/.netrc once, and then sends every request with exactly the settings it
would have read from the environment for it."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from steplog.otlp import LeanOtlpHttpExporter, pin_environment

URL = "http://collector.example:4318/v1/traces"


def _clear(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.mark.parametrize("no_proxy", ["", "collector.example"], ids=["proxied", "bypassed"])
def test_a_pinned_session_sends_with_what_the_environment_said(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_proxy: str
) -> None:
    _clear(monkeypatch)
    monkeypatch.setenv("http_proxy", "http://proxy.example:3128")
    monkeypatch.setenv("no_proxy", no_proxy)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "bundle.pem"))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text("machine collector.example login user password secret\n")
    session = requests.Session()
    session.verify = "/etc/otlp-ca.pem"  # (as the exporter sets OTEL_EXPORTER_OTLP_CERTIFICATE)
    expected = session.merge_environment_settings(URL, {}, None, None, None)
    prepared = session.prepare_request(requests.Request("POST", URL))
    pin_environment(session, URL)
    assert not session.trust_env
    assert session.merge_environment_settings(URL, {}, None, None, None) == expected
    assert ("http" in session.proxies) == (not no_proxy)
    assert session.verify == str(tmp_path / "bundle.pem")  # (requests' own precedence)
    assert (
        session.prepare_request(requests.Request("POST", URL)).headers["Authorization"]
        == prepared.headers["Authorization"]
    )
    # Whatever the environment says later is not read again.
    monkeypatch.setenv("http_proxy", "http://other.example:3128")
    assert session.merge_environment_settings(URL, {}, None, None, None) == expected


def test_the_exporter_pins_its_session(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear(monkeypatch)
    exporter = LeanOtlpHttpExporter(endpoint=URL)
    session = exporter._client._transport._session  # type: ignore[attr-defined]
    assert isinstance(session, requests.Session)
    assert not session.trust_env
    exporter.shutdown()
