"""The simulated cluster's PKI, laid out the way PVE lays out its own.

PVE creates one cluster CA (`/etc/pve/pve-root-ca.pem`, key in
`/etc/pve/priv/pve-root-ca.key`) and signs a certificate per node
(`/etc/pve/nodes/<node>/pve-ssl.pem` + `pve-ssl.key`) whose subject
alternative names cover `localhost`, `127.0.0.1`, `::1` and the node name.
Clients verify the API against the CA. The simulator does the same so that
the agent runs with certificate verification on, exactly as it must in
production.

Existing material in the state directory is reused (PVE does not rotate the
CA on restart either); a missing or unreadable file is regenerated.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# PVE uses 4096-bit RSA for the CA and 2048-bit for node certificates; the
# simulator uses 2048 for both so that a fresh lab starts in well under a
# second per node. Clients cannot tell the difference.
_KEY_BITS = 2048
_CA_DAYS = 3650
_NODE_DAYS = 730


@dataclass(frozen=True)
class NodeCert:
    node: str
    cert_path: Path
    key_path: Path


@dataclass(frozen=True)
class ClusterPki:
    """Paths of the CA and of each node's certificate and key."""

    ca_cert_path: Path
    ca_key_path: Path
    nodes: dict[str, NodeCert]


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o644)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _make_ca(cluster: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "Proxmox Virtual Environment"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"pvesim {cluster}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PVE Cluster Manager CA"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_node_cert(
    node: str, ca_key: rsa.RSAPrivateKey, ca_cert: x509.Certificate
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName(node),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, node),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "PVE Cluster Node"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Proxmox Virtual Environment"),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=_NODE_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _load_pair(
    cert_path: Path, key_path: Path
) -> tuple[rsa.RSAPrivateKey, x509.Certificate] | None:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, rsa.RSAPrivateKey):
        return None
    return key, cert


def _node_cert_matches(cert: x509.Certificate, node: str, ca_cert: x509.Certificate) -> bool:
    if cert.issuer != ca_cert.subject:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return node in san.get_values_for_type(x509.DNSName)


def ensure_pki(state_dir: Path, node_names: list[str], cluster: str = "pvesim") -> ClusterPki:
    """Create (or reuse) the CA and one certificate per node below `state_dir`.

    Layout, mirroring /etc/pve: `pve-root-ca.pem`, `priv/pve-root-ca.key`,
    `nodes/<node>/pve-ssl.pem`, `nodes/<node>/pve-ssl.key`.
    """
    if not node_names:
        raise ValueError("ensure_pki: no node names given")
    ca_cert_path = state_dir / "pve-root-ca.pem"
    ca_key_path = state_dir / "priv" / "pve-root-ca.key"
    loaded = _load_pair(ca_cert_path, ca_key_path)
    if loaded is None:
        ca_key, ca_cert = _make_ca(cluster)
        _write_private(ca_key_path, _key_pem(ca_key))
        _write_public(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM))
    else:
        ca_key, ca_cert = loaded
    nodes: dict[str, NodeCert] = {}
    for node in node_names:
        node_dir = state_dir / "nodes" / node
        cert_path, key_path = node_dir / "pve-ssl.pem", node_dir / "pve-ssl.key"
        pair = _load_pair(cert_path, key_path)
        if pair is None or not _node_cert_matches(pair[1], node, ca_cert):
            key, cert = _make_node_cert(node, ca_key, ca_cert)
            _write_private(key_path, _key_pem(key))
            _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        nodes[node] = NodeCert(node, cert_path, key_path)
    return ClusterPki(ca_cert_path, ca_key_path, nodes)
