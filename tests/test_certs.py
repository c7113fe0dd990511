"""The installation CA: created once, private key kept private, certificates that verify."""

from __future__ import annotations

import io
import ipaddress
import stat
import zipfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    ClientVerifier,
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from telemetra.certs import (
    DeviceCA,
    device_bundle_zip,
    issue_client_cert,
    issue_server_cert,
)


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _key_matches(cert: x509.Certificate, key_pem: bytes) -> bool:
    key = serialization.load_pem_private_key(key_pem, password=None)
    return cert.public_key() == key.public_key()


def _client_verifier(ca: DeviceCA) -> ClientVerifier:
    # The web-PKI profile wants a SAN on client certificates too; OpenSSL (Mosquitto) does
    # not, and a device id is not a DNS name, so the CN alone names the device.
    ee = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    return (
        PolicyBuilder()
        .store(Store([ca.cert]))
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee)
        .build_client_verifier()
    )


@pytest.fixture
def ca(tmp_path: Path) -> DeviceCA:
    return DeviceCA.load_or_create(tmp_path / "ca")


def test_ca_created_once_then_reloaded(tmp_path: Path) -> None:
    folder = tmp_path / "deep" / "ca"
    first = DeviceCA.load_or_create(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "ca.key").stat().st_mode) == 0o600
    assert (folder / "ca.pem").read_bytes() == first.cert_pem
    again = DeviceCA.load_or_create(folder)
    assert again.cert_pem == first.cert_pem
    assert again.key.public_key() == first.key.public_key()

    constraints = first.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = first.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    lifetime = first.cert.not_valid_after_utc - first.cert.not_valid_before_utc
    assert lifetime.days >= 3650
    first.cert.verify_directly_issued_by(first.cert)  # self-signed


def test_ca_without_its_key_is_refused(tmp_path: Path) -> None:
    DeviceCA.load_or_create(tmp_path / "ca")
    (tmp_path / "ca" / "ca.key").unlink()
    with pytest.raises(ValueError, match=r"ca\.key is missing"):
        DeviceCA.load_or_create(tmp_path / "ca")


def test_ca_whose_key_does_not_match_is_refused(tmp_path: Path) -> None:
    DeviceCA.load_or_create(tmp_path / "a")
    DeviceCA.load_or_create(tmp_path / "b")
    (tmp_path / "a" / "ca.pem").write_bytes((tmp_path / "b" / "ca.pem").read_bytes())
    with pytest.raises(ValueError, match="does not belong"):
        DeviceCA.load_or_create(tmp_path / "a")


def test_client_cert_names_the_device_and_chains_to_the_ca(ca: DeviceCA) -> None:
    cert_pem, key_pem = issue_client_cert(ca, "greenhouse-1")
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert _cn(cert) == "greenhouse-1"
    assert _key_matches(cert, key_pem)
    cert.verify_directly_issued_by(ca.cert)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 825 <= lifetime.days <= 826

    # A full RFC 5280 path validation, as a TLS server does it.
    _client_verifier(ca).verify(cert, [])


def test_client_cert_from_another_ca_does_not_verify(ca: DeviceCA, tmp_path: Path) -> None:
    stranger = DeviceCA.load_or_create(tmp_path / "stranger")
    cert = x509.load_pem_x509_certificate(issue_client_cert(stranger, "greenhouse-1")[0])
    with pytest.raises(VerificationError):
        _client_verifier(ca).verify(cert, [])


@pytest.mark.parametrize("uid", ["", "#", "+", "a/b", "a:b", " pad", "tab\t", "x" * 129])
def test_client_cert_for_an_invalid_device_id_is_refused(ca: DeviceCA, uid: str) -> None:
    with pytest.raises(ValueError, match="invalid device id"):
        issue_client_cert(ca, uid)


def test_client_cert_for_the_ingest_username_is_refused(ca: DeviceCA) -> None:
    with pytest.raises(ValueError, match="reserved"):
        issue_client_cert(ca, "telemetra-ingest")


def test_server_cert_names_its_hosts(ca: DeviceCA) -> None:
    cert_pem, key_pem = issue_server_cert(
        ca, ["broker.example.org", "localhost", "10.0.0.5", "::1"]
    )
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert _key_matches(cert, key_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    builder = PolicyBuilder().store(Store([ca.cert]))
    builder.build_server_verifier(x509.DNSName("broker.example.org")).verify(cert, [])
    builder.build_server_verifier(x509.IPAddress(ipaddress.ip_address("10.0.0.5"))).verify(cert, [])
    with pytest.raises(VerificationError):
        builder.build_server_verifier(x509.DNSName("elsewhere.example.org")).verify(cert, [])


def test_server_cert_defaults_to_localhost(ca: DeviceCA) -> None:
    cert = x509.load_pem_x509_certificate(issue_server_cert(ca)[0])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


@pytest.mark.parametrize("hosts", [[], ["bad host"], ["a/b"]])
def test_server_cert_with_bad_names_is_refused(ca: DeviceCA, hosts: list[str]) -> None:
    with pytest.raises(ValueError):
        issue_server_cert(ca, hosts)


def test_device_bundle_zip(ca: DeviceCA) -> None:
    data = device_bundle_zip(ca, "greenhouse-1")
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        assert sorted(bundle.namelist()) == [
            "README.txt",
            "ca.crt",
            "greenhouse-1.crt",
            "greenhouse-1.key",
        ]
        cert = x509.load_pem_x509_certificate(bundle.read("greenhouse-1.crt"))
        assert _cn(cert) == "greenhouse-1"
        cert.verify_directly_issued_by(ca.cert)
        assert _key_matches(cert, bundle.read("greenhouse-1.key"))
        assert bundle.getinfo("greenhouse-1.key").external_attr >> 16 == 0o600
        assert bundle.read("ca.crt") == ca.cert_pem
        readme = bundle.read("README.txt").decode()
    assert "--cafile ca.crt --cert greenhouse-1.crt --key greenhouse-1.key" in readme
    assert "devices/greenhouse-1/telemetry" in readme


def test_device_bundle_file_names_stay_plain(ca: DeviceCA) -> None:
    # Valid as a device id, but '\\' is a path separator to some unzip tools.
    uid = "..\\..\\evil name"
    with zipfile.ZipFile(io.BytesIO(device_bundle_zip(ca, uid))) as bundle:
        names = bundle.namelist()
        crt = next(n for n in names if n.endswith(".crt") and n != "ca.crt")
        assert "\\" not in crt and " " not in crt and not crt.startswith(".")
        assert _cn(x509.load_pem_x509_certificate(bundle.read(crt))) == uid


def test_device_bundle_for_an_invalid_id_is_refused(ca: DeviceCA) -> None:
    with pytest.raises(ValueError, match="invalid device id"):
        device_bundle_zip(ca, "a/b")
