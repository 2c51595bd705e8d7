"""Inputs by reference: paths under the roots, allow-listed hosts, checked addresses, caps."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import CODES, InputError, TransportError
from pipeline.inputs import addresses, check_callback_url, check_url, fetch_input, redact
from pipeline.inputs import urls as urls_module
from pipeline.settings import Settings, load
from tests.support.files import FileServer


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    root = tmp_path / "uploads"
    root.mkdir(exist_ok=True)
    values: dict[str, object] = {"state_dir": tmp_path / "state", "input_roots": [root],
                                 "allowed_hosts": ["127.0.0.1"], "fetch_timeout_s": 5.0,
                                 "max_input_bytes": 1000}
    values.update(overrides)
    return load(**values)


def code_of(exc: pytest.ExceptionInfo[InputError]) -> str:
    assert exc.value.code in CODES
    return exc.value.code


@pytest.fixture
def files() -> Iterator[FileServer]:
    with FileServer() as server:
        yield server


# --- local paths -----------------------------------------------------------------------
def test_a_path_under_a_root_is_copied(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    src = tmp_path / "uploads" / "user1" / "audio.wav"
    src.parent.mkdir()
    src.write_bytes(b"RIFF....")
    work = tmp_path / "work"
    work.mkdir()

    got = fetch_input(str(src), work, settings)
    assert got == work / "audio.wav" and got.read_bytes() == b"RIFF...."
    again = fetch_input(src.as_uri(), work / "copy.wav", settings)
    assert again.read_bytes() == b"RIFF...."
    assert sorted(os.listdir(work)) == ["audio.wav", "copy.wav"]


def test_dotdot_and_symlink_escapes_are_forbidden(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    (tmp_path / "uploads" / "link").symlink_to(secret)
    for url in (f"{tmp_path}/uploads/../secret.txt", "file://" + f"{tmp_path}/uploads/link",
                f"{tmp_path}/uploads/link", "uploads/relative.wav", "file://otherhost/etc/passwd"):
        with pytest.raises(InputError) as exc:
            check_url(url, settings)
        assert code_of(exc) == "input.forbidden_url", url
        with pytest.raises(InputError):
            fetch_input(url, tmp_path / "out", settings)
    assert not (tmp_path / "out").exists()


def test_a_missing_file_is_not_found(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with pytest.raises(InputError) as exc:
        fetch_input(f"{tmp_path}/uploads/nope.wav", tmp_path / "out.wav", settings)
    assert code_of(exc) == "input.not_found"


def test_a_file_over_the_cap_is_too_large(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_input_bytes=10)
    src = tmp_path / "uploads" / "big.wav"
    src.write_bytes(b"x" * 11)
    with pytest.raises(InputError) as exc:
        fetch_input(str(src), tmp_path / "out.wav", settings)
    assert code_of(exc) == "input.too_large" and not (tmp_path / "out.wav").exists()


# --- URL checks (pure) -------------------------------------------------------------------
@pytest.mark.parametrize("url, overrides", [
    ("https://cdn.example.com/a.wav", {"allowed_schemes": ["file", "s3"]}),
    ("ftp://127.0.0.1/a.wav", {}),
    ("gopher://127.0.0.1/", {"allowed_schemes": ["gopher"]}),
    ("http://evil.example.com/a.wav", {}),
    ("http://user:pw@127.0.0.1/a.wav", {}),
    ("http://127.0.0.1/a.wav", {"allow_private_networks": False}),
    ("http://[::1]/a.wav", {"allowed_hosts": ["::1"]}),
    ("http://169.254.169.254/latest/meta-data/", {"allowed_hosts": ["169.254.169.254"]}),
    ("s3://bucket-only", {}),
])
def test_forbidden_urls_are_refused_without_network(tmp_path: Path, url: str,
                                                    overrides: dict[str, object]) -> None:
    with pytest.raises(InputError) as exc:
        check_url(url, make_settings(tmp_path, **overrides))
    assert code_of(exc) == "input.forbidden_url"
    assert "pw" not in str(exc.value)


def test_allowed_hosts_and_wildcards(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, allowed_hosts=["*.example.com", "media.test"])
    assert check_url("https://a.b.example.com/x.wav", settings).host == "a.b.example.com"
    assert check_url("https://MEDIA.test./x.wav", settings).port == 443
    with pytest.raises(InputError):
        check_url("https://example.com.evil.org/x.wav", settings)
    # callbacks: any host, but still http(s) and public addresses only
    assert check_callback_url("https://hooks.partner.org/cb", settings).host == "hooks.partner.org"
    with pytest.raises(InputError):
        check_callback_url("http://10.0.0.8/cb", settings)
    with pytest.raises(InputError):
        check_callback_url("file:///etc/passwd", settings)


def test_redact_drops_credentials_and_query() -> None:
    assert redact("https://u:p@h.example:8443/v.mp4?X-Amz-Signature=s#f") == \
        "https://h.example:8443/v.mp4"


# --- http(s) ----------------------------------------------------------------------------
def test_an_allowed_loopback_server_works_when_private_networks_are_allowed(
        tmp_path: Path, files: FileServer) -> None:
    settings = make_settings(tmp_path, allow_private_networks=True)
    url = files.add("/u/a.wav", b"audio-bytes")
    got = fetch_input(url + "?token=1", tmp_path / "a.wav", settings)
    assert got.read_bytes() == b"audio-bytes"
    assert files.hosts == [f"127.0.0.1:{files.port}"]


def test_a_name_resolving_to_loopback_is_refused_before_connecting(
        tmp_path: Path, files: FileServer) -> None:
    settings = make_settings(tmp_path, allowed_hosts=["localhost"], allow_private_networks=False)
    files.add("/a.wav", b"x")
    url = files.url("/a.wav", host="localhost")
    check_url(url, settings)  # the name itself is allowed: only DNS tells
    with pytest.raises(InputError) as exc:
        fetch_input(url, tmp_path / "a.wav", settings)
    assert code_of(exc) == "input.forbidden_url" and files.hosts == []


def test_the_connection_goes_to_the_checked_address_with_the_original_host(
        tmp_path: Path, files: FileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(tmp_path, allowed_hosts=["media.example.test"],
                             allow_private_networks=True)
    answers = iter([[ipaddress.ip_address("127.0.0.1")], [ipaddress.ip_address("10.1.2.3")]])
    monkeypatch.setattr(addresses, "resolver", lambda host, port: next(answers))
    files.add("/a.wav", b"pinned")
    got = fetch_input(files.url("/a.wav", host="media.example.test"), tmp_path / "a.wav", settings)
    assert got.read_bytes() == b"pinned"
    assert files.hosts == [f"media.example.test:{files.port}"]


@pytest.mark.parametrize("declare, length", [(10_000, True), (None, False)])
def test_too_large_by_header_or_by_streamed_bytes(tmp_path: Path, files: FileServer,
                                                  declare: int | None, length: bool) -> None:
    settings = make_settings(tmp_path, allow_private_networks=True, max_input_bytes=1000)
    url = files.add("/big", b"y" * (500 if declare else 5000), declare=declare, length=length)
    with pytest.raises(InputError) as exc:
        fetch_input(url, tmp_path / "big.wav", settings)
    assert code_of(exc) == "input.too_large"
    assert list(tmp_path.glob("*big*")) == []  # no partial file


def test_redirects_are_followed_and_each_hop_is_checked(
        tmp_path: Path, files: FileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback plays the public internet here: only 10/8 and 169.254/16 count as private."""
    private = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("169.254.0.0/16")]
    public = lambda ip: not any(ip in net for net in private)  # noqa: E731
    monkeypatch.setattr(addresses, "is_public", public)
    monkeypatch.setattr(urls_module, "is_public", public)
    monkeypatch.setattr(addresses, "resolver",
                        lambda host, port: [ipaddress.ip_address("10.0.0.5")])
    settings = make_settings(tmp_path, allowed_hosts=["127.0.0.1", "169.254.169.254",
                                                      "internal.example.test"])
    files.add("/final.wav", b"ok")
    files.redirect("/hop2", "/final.wav", status=307)
    assert fetch_input(files.redirect("/hop1", files.url("/hop2")), tmp_path / "a", settings) \
        .read_bytes() == b"ok"

    for target in ("http://169.254.169.254/latest/meta-data/", "http://internal.example.test/x",
                   "file:///etc/passwd", "http://not-allowed.example.com/x"):
        with pytest.raises(InputError) as exc:
            fetch_input(files.redirect("/evil", target), tmp_path / "b", settings)
        assert code_of(exc) == "input.forbidden_url", target

    files.redirect("/loop", "/loop")
    with pytest.raises(InputError) as exc:
        fetch_input(files.url("/loop"), tmp_path / "c", settings)
    assert code_of(exc) == "input.unreachable"


def test_http_errors_map_to_codes(tmp_path: Path, files: FileServer) -> None:
    settings = make_settings(tmp_path, allow_private_networks=True)
    files.add("/gone", b"", status=410)
    files.add("/busy", b"", status=503)
    files.add("/denied", b"", status=403)
    for path, code in (("/missing", "input.not_found"), ("/gone", "input.not_found"),
                       ("/denied", "input.unreachable")):
        with pytest.raises(InputError) as exc:
            fetch_input(files.url(path), tmp_path / "x", settings)
        assert code_of(exc) == code and not exc.value.retryable
    with pytest.raises(TransportError) as busy:
        fetch_input(files.url("/busy"), tmp_path / "x", settings)
    assert busy.value.retryable and busy.value.code in CODES


def test_a_closed_port_is_a_recoverable_transport_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, allow_private_networks=True)
    with FileServer() as closed:
        url = closed.url("/a.wav")
    with pytest.raises(TransportError) as exc:
        fetch_input(url, tmp_path / "a.wav", settings)
    assert exc.value.retryable and exc.value.code == "transport.error"


def test_https_connects_to_the_checked_address_with_sni_and_verifies_the_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.tls import self_signed

    cert, key = self_signed(tmp_path, "media.example.test")
    settings = make_settings(tmp_path, allowed_hosts=["media.example.test"],
                             allow_private_networks=True)
    monkeypatch.setattr(addresses, "resolver",
                        lambda host, port: [ipaddress.ip_address("127.0.0.1")])
    with FileServer(tls=(cert, key)) as files:
        files.add("/a.wav", b"over tls")
        url = files.url("/a.wav", host="media.example.test")
        with pytest.raises(InputError) as untrusted:  # self-signed: not trusted by default
            fetch_input(url, tmp_path / "a.wav", settings)
        assert code_of(untrusted) == "input.unreachable"

        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # now trusted, for this name only
        assert fetch_input(url, tmp_path / "a.wav", settings).read_bytes() == b"over tls"
        assert files.server_names[-1] == "media.example.test"
        assert files.hosts == [f"media.example.test:{files.port}"]
