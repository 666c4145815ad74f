"""The cluster PKI: what a PVE client relies on when it verifies the API."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

import pytest
import requests
from cryptography import x509

from pvesim.server import NodeServer
from pvesim.tls import ensure_pki
from tests.pvesim.conftest import StubCluster


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ensure_pki(d, ["pve1", "pve2"])
    return d


def test_layout_mirrors_etc_pve(pki_dir: Path) -> None:
    assert (pki_dir / "pve-root-ca.pem").is_file()
    assert (pki_dir / "priv" / "pve-root-ca.key").stat().st_mode & 0o777 == 0o600
    for node in ("pve1", "pve2"):
        assert (pki_dir / "nodes" / node / "pve-ssl.pem").is_file()
        assert (pki_dir / "nodes" / node / "pve-ssl.key").stat().st_mode & 0o777 == 0o600


def test_node_certificate_sans_and_issuer(pki_dir: Path) -> None:
    ca = x509.load_pem_x509_certificate((pki_dir / "pve-root-ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((pki_dir / "nodes/pve2/pve-ssl.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "pve2"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"),
    }
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca is True


def test_reused_on_restart_and_extended_for_new_nodes(tmp_path: Path) -> None:
    first = ensure_pki(tmp_path, ["pve1"])
    ca_before = first.ca_cert_path.read_bytes()
    node_before = first.nodes["pve1"].cert_path.read_bytes()
    second = ensure_pki(tmp_path, ["pve1", "pve3"])
    assert second.ca_cert_path.read_bytes() == ca_before
    assert second.nodes["pve1"].cert_path.read_bytes() == node_before
    cert = x509.load_pem_x509_certificate(second.nodes["pve3"].cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "pve3" in san.get_values_for_type(x509.DNSName)


def test_no_nodes_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no node names"):
        ensure_pki(tmp_path, [])


def test_verification_passes_with_cluster_ca_and_fails_with_another(
    pki_dir: Path, tmp_path: Path
) -> None:
    pki = ensure_pki(pki_dir, ["pve1", "pve2"])
    other = ensure_pki(tmp_path / "other", ["pve1"])
    server = NodeServer("pve1", StubCluster(), pki.nodes["pve1"])
    server.start()
    try:
        auth = {"Authorization": "PVEAPIToken=root@pam!admin=s3cret"}
        url = f"{server.url}/api2/json/version"
        ok = requests.get(url, headers=auth, verify=str(pki.ca_cert_path), timeout=5)
        assert ok.status_code == 200
        assert ok.json()["data"]["release"] == "9.1"
        with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
            requests.get(url, headers=auth, verify=str(other.ca_cert_path), timeout=5)
        # 'localhost' is in the SANs as well
        local = f"https://localhost:{server.port}/api2/json/version"
        assert requests.get(local, headers=auth, verify=str(pki.ca_cert_path),
                            timeout=5).status_code == 200
        # the system trust store does not know the cluster CA
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, headers=auth, verify=True, timeout=5)
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert_path))
        assert ctx.cert_store_stats()["x509_ca"] == 1
    finally:
        server.stop()
