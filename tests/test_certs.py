"""The development certificate command."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from cryptography import x509

from wschat.certs import main


def test_writes_a_certificate_for_localhost(tmp_path: Path) -> None:
    """cert.pem names localhost, 127.0.0.1 and ::1; key.pem is private to its owner."""
    main([str(tmp_path / "certs")])
    cert = x509.load_pem_x509_certificate((tmp_path / "certs" / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    mode = stat.S_IMODE((tmp_path / "certs" / "key.pem").stat().st_mode)
    assert mode == 0o600
