"""The SSRF guard of notifications: every address class that is not public is refused (literal
addresses and host names resolved by DNS), other schemes are refused, the allow-list lets
named hosts, addresses and networks through, and a checked target pins the address."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from telemetra.alerts.ssrf import AllowList, Refused, address_class, check_url, parse_allow
from telemetra.config import Settings

NONE = AllowList()


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("[::1]", "loopback"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("[fe80::1]", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.5.4", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.254", "CGNAT"),
        ("[fc00::1]", "unique-local"),
        ("[fd12:3456::1]", "unique-local"),
        ("0.0.0.0", "unspecified"),
        ("[::]", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("[ff02::1]", "multicast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.10", "reserved"),  # documentation range, not global
        ("255.255.255.255", "reserved"),
        ("[::ffff:127.0.0.1]", "loopback"),  # IPv4-mapped: judged as the IPv4 address
        ("[::ffff:a9fe:a9fe]", "link-local"),
    ],
)
async def test_addresses_that_are_not_public_are_refused_naming_the_class_and_setting(
    host: str, kind: str
) -> None:
    with pytest.raises(Refused) as refused:
        await check_url(f"http://{host}:8080/hook", NONE)
    message = str(refused.value)
    assert f"is a {kind} address" in message
    assert "TELEMETRA_NOTIFY_ALLOW" in message
    assert host.strip("[]") in message


async def test_a_host_name_is_refused_by_what_it_resolves_to() -> None:
    with pytest.raises(Refused, match=r"\(localhost resolves to it\) is a loopback address"):
        await check_url("https://localhost/hook", NONE)


@pytest.mark.parametrize(
    "url", ["ftp://93.184.216.34/x", "file:///etc/passwd", "gopher://1.1.1.1/", "//1.1.1.1/x"]
)
async def test_only_http_and_https_are_allowed(url: str) -> None:
    with pytest.raises(Refused, match="only http and https"):
        await check_url(url, NONE)


async def test_a_url_without_host_or_with_a_bad_port_is_refused() -> None:
    with pytest.raises(Refused, match="names no host"):
        await check_url("http:///path", NONE)
    with pytest.raises(Refused, match="not a valid URL"):
        await check_url("http://1.1.1.1:99999/", NONE)


async def test_public_addresses_pass_and_the_target_pins_the_checked_address() -> None:
    target = await check_url("http://93.184.216.34:8080/hook/a?b=1", NONE)
    assert target.address == ipaddress.ip_address("93.184.216.34")
    assert target.pinned_url == "http://93.184.216.34:8080/hook/a?b=1"
    assert target.host_header == "93.184.216.34:8080"
    six = await check_url("https://[2606:4700:4700::1111]/h", NONE)
    assert six.pinned_url == "https://[2606:4700:4700::1111]:443/h"
    assert six.host_header == "[2606:4700:4700::1111]"
    assert address_class(ipaddress.ip_address("8.8.8.8")) is None


async def test_a_resolved_host_keeps_its_name_for_the_host_header() -> None:
    allow = parse_allow("localhost")
    target = await check_url("http://LOCALHOST:9000/x", allow)
    assert target.host == "localhost"
    assert target.host_header == "localhost:9000"
    assert target.address.is_loopback
    assert target.pinned_url.startswith(
        f"http://{'[::1]' if target.address.version == 6 else '127.0.0.1'}:9000/x"
    )


async def test_the_allow_list_names_addresses_networks_and_hosts() -> None:
    allow = parse_allow(" 127.0.0.1, 10.0.0.0/8 ,hooks.internal., fd00::/8, [::1] ,")
    assert allow.hosts == frozenset({"hooks.internal"})
    assert (await check_url("http://127.0.0.1:1/", allow)).address.is_loopback
    assert str((await check_url("http://10.200.0.5/", allow)).address) == "10.200.0.5"
    assert str((await check_url("http://[fd00::5]/", allow)).address) == "fd00::5"
    with pytest.raises(Refused, match=r"192\.168\.1\.1 is a private address"):
        await check_url("http://192.168.1.1/", allow)
    with pytest.raises(Refused, match=r"127\.0\.0\.2 is a loopback address"):
        await check_url("http://127.0.0.2/", allow)
    # A host allowed by name may resolve to anything; by address, only that address passes.
    assert (await check_url("http://localhost/", parse_allow("localhost"))).address.is_loopback


def test_a_bad_network_in_the_setting_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33' is not a network"):
        parse_allow("10.0.0.0/33")
    with pytest.raises(ValidationError, match="TELEMETRA_NOTIFY_ALLOW"):
        Settings(notify_allow="127.0.0.1,10.0.0.0/33", _env_file=None)
