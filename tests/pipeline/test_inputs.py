"""Inputs by reference: paths under the roots, allow-listed hosts, checked addresses, caps."""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import CODES, InputError, TransportError
from pipeline.inputs import (addresses, check_callback_url, check_url, fetch_input, redact,
                             role_path)
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

    got = fetch_input(str(src), role_path(work, "audio", str(src)), settings)
    assert got == work / "audio.wav" and got.read_bytes() == b"RIFF...."
    again = fetch_input(src.as_uri(), work / "copy.wav", settings)
    assert again.read_bytes() == b"RIFF...."
    assert sorted(os.listdir(work)) == ["audio.wav", "copy.wav"]
    with pytest.raises(ValueError):  # a directory is never a destination
        fetch_input(str(src), work, settings)


def test_inputs_land_by_role_never_by_url_base_name(tmp_path: Path) -> None:
    """Given two uploads that share a base name (.../123/original, .../124/original)."""
    settings = make_settings(tmp_path)
    uploads = tmp_path / "uploads"
    for folder, body in (("123", b"image-bytes"), ("124", b"audio-bytes")):
        (uploads / folder).mkdir()
        (uploads / folder / "original").write_bytes(body)
    work = tmp_path / "work"
    work.mkdir()

    image_url, audio_url = f"{uploads}/123/original", f"{uploads}/124/original"
    image = fetch_input(image_url, role_path(work, "image", image_url), settings)
    audio = fetch_input(audio_url, role_path(work, "audio", audio_url), settings)

    assert (image.name, image.read_bytes()) == ("image.bin", b"image-bytes")
    assert (audio.name, audio.read_bytes()) == ("audio.bin", b"audio-bytes")


@pytest.mark.parametrize("role, url, name", [
    ("image", "https://cdn.example.com/u/face.JPG?sig=1", "image.jpg"),
    ("image", "/uploads/u/portrait.webp", "image.webp"),
    ("image", "/uploads/u/../../etc/face.png", "image.png"),
    ("image", "/uploads/u/face.svg", "image.bin"),
    ("audio", "s3://uploads/u/take%201.M4A", "audio.m4a"),
    ("audio", "/uploads/u/voice.mp3", "audio.mp3"),
    ("audio", "/uploads/u/list.m3u8", "audio.bin"),
    ("audio", "/uploads/u/concat.txt", "audio.bin"),
    ("audio", "/uploads/u/face.png", "audio.bin"),
    ("audio", "https://cdn.example.com/a/", "audio.bin"),
    ("audio", "/uploads/u/.wav", "audio.bin"),
])
def test_role_paths_keep_only_known_extensions(tmp_path: Path, role: str, url: str,
                                               name: str) -> None:
    assert role_path(tmp_path, role, url) == tmp_path / name


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
    ("s3://uploads/u/a.wav", {}),  # no bucket allowed by default
    ("s3://sonic-videos/videos/other-tenant.mp4", {}),  # the results bucket is not implied
    ("s3://other/u/a.wav", {"input_buckets": ["uploads"]}),
    ("s3://uploads/results/a.wav", {"input_buckets": ["uploads/incoming"]}),
    ("s3://uploads/incoming/../results/a.wav", {"input_buckets": ["uploads/incoming"]}),
    ("s3://uploads/incoming/./a.wav", {"input_buckets": ["uploads/incoming"]}),
    ("s3://uploads/incomingx/a.wav", {"input_buckets": ["uploads/incoming"]}),
    ("s3://Uploads_/a.wav", {"input_buckets": ["Uploads_"]}),
    ("s3://user:pw@uploads/a.wav", {"input_buckets": ["uploads"]}),
])
def test_forbidden_urls_are_refused_without_network(tmp_path: Path, url: str,
                                                    overrides: dict[str, object]) -> None:
    with pytest.raises(InputError) as exc:
        check_url(url, make_settings(tmp_path, **overrides))
    assert code_of(exc) == "input.forbidden_url"
    assert "pw" not in str(exc.value)


@pytest.mark.parametrize("url, buckets", [
    ("s3://uploads/u/a.wav", ["uploads"]),
    ("s3://uploads/incoming/u/a%20b.wav", ["uploads/incoming/", "other"]),
    ("s3://media.example-1/x", ["media.example-1"]),
])
def test_allowed_buckets_and_prefixes(tmp_path: Path, url: str, buckets: list[str]) -> None:
    ref = check_url(url, make_settings(tmp_path, input_buckets=buckets))
    assert ref.scheme == "s3" and ref.bucket == url.split("/")[2]
    assert " " in ref.key or "%" not in url


def test_input_buckets_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SONIC_INPUT_BUCKETS", "uploads, partner/incoming")
    assert load().input_buckets == ["uploads", "partner/incoming"]
    monkeypatch.delenv("SONIC_INPUT_BUCKETS")
    assert load().input_buckets == []


def test_a_bucket_not_allowed_is_refused_at_fetch_before_any_request(tmp_path: Path) -> None:
    """The worker re-checks: its own settings rule, whatever admission said."""
    settings = make_settings(tmp_path, input_buckets=["uploads"],
                             s3_endpoint="http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(InputError) as exc:
        fetch_input("s3://sonic-videos/videos/t1.mp4", tmp_path / "x.mp4", settings)
    assert code_of(exc) == "input.forbidden_url" and "SONIC_INPUT_BUCKETS" in exc.value.message
    assert not (tmp_path / "x.mp4").exists()


def test_admission_refuses_a_bucket_not_allowed(tmp_path: Path) -> None:
    from pipeline.jobs import decode

    settings = make_settings(tmp_path, input_buckets=["uploads"])
    message = {"task_id": "s3-bucket-1", "image_url": "s3://uploads/u/face.jpg",
               "audio_url": "s3://sonic-videos/videos/other.mp4"}
    with pytest.raises(Exception) as exc:
        decode(json.dumps(message).encode(), settings)
    assert getattr(exc.value, "code", None) == "input.forbidden_url"
    message["audio_url"] = "s3://uploads/u/voice.mp3"
    assert decode(json.dumps(message).encode(), settings).audio_url == message["audio_url"]


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


# --- IPv6 addresses that carry an IPv4 one ------------------------------------------------
EMBEDDING_PRIVATE = [
    "64:ff9b::7f00:1",  # NAT64 well-known prefix -> 127.0.0.1
    "64:ff9b::a00:5",  # NAT64 -> 10.0.0.5
    "64:ff9b::a9fe:a9fe",  # NAT64 -> 169.254.169.254 (cloud metadata)
    "64:ff9b:1::808:808",  # local-use NAT64: the operator's own networks
    "64:ff9b:1:7f00:0:100::",  # local-use NAT64, /48 embedding of 127.0.0.1
    "::7f00:1",  # IPv4-compatible ::127.0.0.1
    "::a9fe:a9fe",  # IPv4-compatible ::169.254.169.254
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.1.2.3",
    "::ffff:0:7f00:1",  # IPv4-translated (SIIT)
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo, client 10.0.0.1
    "::", "::1", "fe80::1", "fc00::1", "ff02::1",
]
EMBEDDING_PUBLIC = ["64:ff9b::808:808", "::ffff:8.8.8.8", "2002:808:808::1",
                    "2606:4700:4700::1111", "8.8.8.8"]


@pytest.mark.parametrize("address", EMBEDDING_PRIVATE)
def test_ipv6_forms_of_private_ipv4_are_not_public(tmp_path: Path, address: str) -> None:
    assert not addresses.is_public(ipaddress.ip_address(address))
    settings = make_settings(tmp_path, allowed_hosts=[address])
    with pytest.raises(InputError) as exc:  # as a literal, refused at admission
        check_url(f"http://[{address}]/a.wav", settings)
    assert code_of(exc) == "input.forbidden_url"


@pytest.mark.parametrize("address", EMBEDDING_PRIVATE[:14])
def test_a_name_resolving_to_an_embedded_private_address_is_refused_at_fetch(
        tmp_path: Path, files: FileServer, monkeypatch: pytest.MonkeyPatch,
        address: str) -> None:
    settings = make_settings(tmp_path, allowed_hosts=["media.example.test"])
    monkeypatch.setattr(addresses, "resolver",
                        lambda host, port: [ipaddress.ip_address(address)])
    url = files.add("/a.wav", b"x").replace("127.0.0.1", "media.example.test")
    with pytest.raises(InputError) as exc:
        fetch_input(url, tmp_path / "a.wav", settings)
    assert code_of(exc) == "input.forbidden_url" and files.hosts == []


@pytest.mark.parametrize("address", EMBEDDING_PUBLIC)
def test_public_addresses_stay_public(address: str) -> None:
    assert addresses.is_public(ipaddress.ip_address(address))


def test_embedded_ipv4_reads_every_form() -> None:
    found = {str(a) for a in addresses.embedded_ipv4(
        ipaddress.ip_address("2001:0:4136:e378:8000:63bf:80ff:fffe"))}
    assert found == {"65.54.227.120", "127.0.0.1"}  # Teredo: server and client
    assert [str(a) for a in addresses.embedded_ipv4(ipaddress.ip_address("64:ff9b::a00:5"))] \
        == ["10.0.0.5"]
    assert addresses.embedded_ipv4(ipaddress.ip_address("10.0.0.5")) == []


@pytest.mark.parametrize("length", [True, False])
def test_a_trickling_server_is_cut_at_the_whole_download_limit(
        tmp_path: Path, files: FileServer, length: bool) -> None:
    """Each byte comes well inside the per-read timeout, the whole body would take 10 s:
    the download stops at SONIC_FETCH_TOTAL_S, retryable, and leaves no file."""
    import time

    settings = make_settings(tmp_path, allow_private_networks=True, fetch_total_s=1.0)
    files.add("/slow.wav", b"x" * 200, trickle=0.05, length=length)
    files.redirect("/via", files.url("/slow.wav"))
    for path in ("/slow.wav", "/via"):  # the limit spans the redirects too
        started = time.monotonic()
        with pytest.raises(TransportError) as exc:
            fetch_input(files.url(path), tmp_path / "a.wav", settings)
        assert time.monotonic() - started < 2.5
        assert exc.value.code == "transport.timeout" and exc.value.retryable
        assert "SONIC_FETCH_TOTAL_S (1 s" in exc.value.message
        assert not (tmp_path / "a.wav").exists()


def test_a_slow_download_inside_the_limit_completes(tmp_path: Path, files: FileServer) -> None:
    settings = make_settings(tmp_path, allow_private_networks=True, fetch_total_s=5.0)
    files.add("/slow.wav", b"abcdefghijklmnopqrst", trickle=0.02)
    fetch_input(files.url("/slow.wav"), tmp_path / "a.wav", settings)
    assert (tmp_path / "a.wav").read_bytes() == b"abcdefghijklmnopqrst"
