"""The installation's certificate authority: device client certificates and broker server certs.

One EC P-256 CA per installation, kept in a folder as ``ca.key`` (0600) and ``ca.pem``. It signs
device certificates (CN = device id, which Mosquitto's ``use_identity_as_username`` turns into
the MQTT username) and the broker's server certificate.
"""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import os
import re
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from telemetra.model import valid_device_uid

__all__ = [
    "RESERVED_CERT_NAMES",
    "DeviceCA",
    "certificate_facts",
    "device_bundle_zip",
    "issue_client_cert",
    "issue_server_cert",
    "issue_service_cert",
]

CA_DAYS = 3650
# OpenSSL refuses every client certificate once the CRL it checks is past its next update, so
# the list is valid for long; each sync writes a fresh one anyway.
CRL_DAYS = 3650
# Broker usernames that must never be a device certificate's CN: with use_identity_as_username
# such a certificate would log in as that service (the ingest user reads every device's data).
RESERVED_CERT_NAMES = frozenset({"telemetra-ingest", "chirpstack"})
# Backdate validity a little so that a device whose clock lags still accepts a fresh cert.
_BACKDATE = dt.timedelta(hours=1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret file with mode 0600 from the start, atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class DeviceCA:
    """The installation CA: a private key and its self-signed certificate."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate in PEM form (what devices and the broker trust)."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def load_existing(cls, folder: Path) -> DeviceCA | None:
        """The CA in ``folder``, or None when there is none yet (never creates one)."""
        return cls.load_or_create(folder) if (folder / "ca.key").exists() else None

    @classmethod
    def load_or_create(cls, folder: Path) -> DeviceCA:
        """Load ``folder/ca.key`` + ``ca.pem``, creating them (and a 0700 folder) on first use."""
        if not folder.exists():
            folder.mkdir(parents=True, mode=0o700)
            os.chmod(folder, 0o700)  # mkdir's mode is filtered by the umask
        key_path, cert_path = folder / "ca.key", folder / "ca.pem"
        if not key_path.exists():
            if cert_path.exists():
                raise ValueError(
                    f"{cert_path} exists but {key_path} is missing: the CA cannot sign without "
                    "its key; restore ca.key or remove ca.pem to start a new CA"
                )
            key = ec.generate_private_key(ec.SECP256R1())
            _write_private(key_path, _key_pem(key))
        else:
            loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path} is not an EC private key")
            key = loaded
        if cert_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if cert.public_key() != key.public_key():
                raise ValueError(f"{cert_path} does not belong to the key in {key_path}")
        else:
            # Also reached when a previous run died between the two writes: the key is kept.
            cert = _self_signed(key)
            _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert)

    def revocation_list(self, serials: Iterable[str]) -> bytes:
        """A CRL (PEM) signed by this CA naming the certificates with ``serials`` (hex)."""
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + dt.timedelta(days=CRL_DAYS))
        )
        for serial in sorted(set(serials)):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial, 16))
                .revocation_date(now - _BACKDATE)
                .build()
            )
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def certificate_facts(cert_pem: bytes) -> tuple[str, int]:
    """(serial number in hex, end of validity in epoch µs) of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return format(cert.serial_number, "x"), int(cert.not_valid_after_utc.timestamp() * 1_000_000)


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Telemetra"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Telemetra device CA"),
        ]
    )
    now = _now()
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _leaf(
    ca: DeviceCA,
    common_name: str,
    days: int,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[bytes, bytes]:
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    # Never outlive the CA: a certificate valid past its issuer fails verification anyway.
    not_after = min(now + dt.timedelta(days=days), ca.cert.not_valid_after_utc)
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def issue_client_cert(ca: DeviceCA, device_uid: str, days: int = 825) -> tuple[bytes, bytes]:
    """A device client certificate (CN = device id, clientAuth): (cert PEM, key PEM)."""
    if not valid_device_uid(device_uid):
        raise ValueError(
            f"invalid device id {device_uid!r}: 1–128 printable characters without spaces at "
            "the ends and without '/', '+', '#', ':'"
        )
    if device_uid in RESERVED_CERT_NAMES:
        raise ValueError(f"{device_uid!r} is reserved for a service's broker login")
    return _leaf(ca, device_uid, days, ExtendedKeyUsageOID.CLIENT_AUTH)


def issue_service_cert(ca: DeviceCA, username: str, days: int = 825) -> tuple[bytes, bytes]:
    """A client certificate for a service account such as the ingest user - not for devices."""
    if not valid_device_uid(username):
        raise ValueError(f"invalid username {username!r} for a certificate")
    return _leaf(ca, username, days, ExtendedKeyUsageOID.CLIENT_AUTH)


def issue_server_cert(
    ca: DeviceCA, hostnames: Sequence[str] = ("localhost", "127.0.0.1"), days: int = 825
) -> tuple[bytes, bytes]:
    """A broker certificate (serverAuth) naming ``hostnames``: (cert PEM, key PEM).

    Each name becomes an IP-address SAN when it parses as one, else a DNS SAN.
    """
    if isinstance(hostnames, str):  # a lone "host" would otherwise become h, o, s, t
        hostnames = [hostnames]
    sans: list[x509.GeneralName] = []
    for name in hostnames:
        name = name.strip()
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        if not name or any(c.isspace() or c in "/:@" for c in name):
            raise ValueError(f"invalid host name {name!r} for the server certificate")
        sans.append(x509.DNSName(name))
    if not sans:
        raise ValueError("the server certificate needs at least one host name or IP address")
    first = hostnames[0].strip()
    return _leaf(ca, first[:64], days, ExtendedKeyUsageOID.SERVER_AUTH, sans)


def _file_stem(uid: str) -> str:
    # Device ids may hold characters that mean something to file systems or unzip tools
    # ('\\', '..', spaces): the file names in the bundle stay plain.
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", uid).lstrip(".")
    return stem or "device"


def device_bundle_zip(
    ca: DeviceCA,
    device_uid: str,
    *,
    host: str = "<broker-host>",
    port: int = 8883,
    issued: tuple[bytes, bytes] | None = None,
) -> bytes:
    """A zip with a client certificate and key for a device (``issued`` by
    ``issue_client_cert``, or new), the CA cert and a README."""
    cert_pem, key_pem = issued or issue_client_cert(ca, device_uid)
    stem = _file_stem(device_uid)
    readme = f"""Telemetra device credentials for {device_uid}

  {stem}.crt   client certificate (CN = {device_uid})
  {stem}.key   its private key - keep it secret, install it only on this device
  ca.crt       the certificate authority that signed the broker's certificate

With a broker that requires client certificates, the certificate alone identifies the device;
no username or password is needed:

  mosquitto_pub -h {host} -p {port} --cafile ca.crt --cert {stem}.crt --key {stem}.key \\
      -q 1 -t 'devices/{device_uid}/telemetry' -m '{{"temperature": 21.5}}'

The device may publish only on its own topics (devices/{device_uid}/telemetry,
qs/v1/{device_uid}/events, tele/{device_uid}/...) and read its acks on
devices/{device_uid}/acks. -h must name the broker as written in its certificate.
"""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr(f"{stem}.crt", cert_pem)
        key_info = zipfile.ZipInfo(f"{stem}.key", date_time=_now().timetuple()[:6])
        key_info.compress_type = zipfile.ZIP_DEFLATED
        key_info.external_attr = 0o600 << 16  # unzip restores the mode: keep the key private
        bundle.writestr(key_info, key_pem)
        bundle.writestr("ca.crt", ca.cert_pem)
        bundle.writestr("README.txt", readme)
    return buffer.getvalue()
