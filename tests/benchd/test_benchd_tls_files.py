"""TLS file sets are checked before gRPC sees them: gRPC's C core aborts the whole process on a
client certificate without its key, and says only "Failed to bind" for a key that does not match
its certificate. Each case is one line naming the file, exit status 2, the process alive."""

from __future__ import annotations

import base64
import random
import ssl
import subprocess
import sys

import pytest

from benchd.security import ClientTls, ServerTls, TlsFilesError
from benchd.server import ServerConfig, create_server
from tests.helpers import benchd_fixtures as fx


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return fx.make_tls(tmp_path_factory.mktemp("tls"))


def _benchd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchd.cli", *args], capture_output=True, text=True, timeout=60)


def test_a_client_certificate_without_its_key_is_refused_not_aborted(certs):
    with pytest.raises(TlsFilesError, match="a certificate without its private key"):
        ClientTls(str(certs["ca"]), cert_file=str(certs["client_cert"])).credentials()
    p = _benchd("info", "--target", "127.0.0.1:1", "--tls-ca", str(certs["ca"]), "--tls-cert", str(certs["client_cert"]))
    assert p.returncode == 2, p.stderr  # was 134 (SIGABRT) from gRPC's C core
    assert p.stderr.strip() == "benchd info: client TLS: a certificate without its private key (the certificate and key go together)"


@pytest.mark.parametrize("which, says", [("ca", "TLS CA {p}: not a PEM certificate (it holds PRIVATE KEY)"),
                                         ("missing", "TLS CA {p}: cannot read (No such file or directory)")])
def test_a_bad_ca_file_is_named(certs, tmp_path, which, says):
    p = certs["client_key"] if which == "ca" else tmp_path / "nope.pem"
    with pytest.raises(TlsFilesError) as e:
        ClientTls(str(p)).credentials()
    assert str(e.value) == says.format(p=p)


def test_server_tls_with_a_garbage_or_mismatched_key(certs, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"\x00not a key")
    with pytest.raises(TlsFilesError, match=f"TLS key {garbage}: not a PEM private key"):
        ServerTls(str(certs["server_cert"]), str(garbage)).credentials()
    # a real key of another certificate: gRPC refuses it; we say which files
    cfg = ServerConfig(cache_dir=str(tmp_path / "cache"), tls=ServerTls(str(certs["server_cert"]),
                                                                         str(certs["client_key"])))
    with pytest.raises(TlsFilesError, match="does the key belong to the certificate"):
        create_server("127.0.0.1:0", cfg)
    p = _benchd("serve", "--port", "0", "--cache-dir", str(tmp_path / "c2"), "--tls-cert", str(certs["server_cert"]),
                "--tls-key", str(certs["client_key"]))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("benchd serve: could not serve TLS on")
    # the right pair still serves in the same process
    good = ServerConfig(cache_dir=str(tmp_path / "cache3"), tls=ServerTls(str(certs["server_cert"]),
                                                                          str(certs["server_key"])))
    server, port = create_server("127.0.0.1:0", good)
    try:
        assert port > 0
    finally:
        server.stop(grace=1)


def _pem(label: str, der: bytes) -> bytes:
    return f"-----BEGIN {label}-----\n{base64.encodebytes(der).decode()}-----END {label}-----\n".encode()


_NOT_X509 = bytes.fromhex("3003020101")  # DER of SEQUENCE { INTEGER 1 }: well framed, not a certificate


@pytest.mark.parametrize("case, says", [
    ("random bytes", "not a PEM certificate (no -----BEGIN CERTIFICATE----- block)"),
    ("random text in a PEM block", "the PEM certificate is damaged (not DER; expected base64 of DER between its "
                                   "BEGIN and END lines)"),
    ("not base64", "the PEM certificate is damaged (not base64; expected base64 of DER between its BEGIN and END "
                   "lines)"),
    ("cut short", "not a PEM certificate (-----BEGIN CERTIFICATE----- without its END line: cut short?)"),
    ("a block of a truncated certificate", "the PEM certificate is damaged (its DER says"),
    ("a DER sequence that is not X.509", "not a valid PEM certificate (OpenSSL cannot read it as X.509: "),
])
def test_a_garbage_or_damaged_ca_is_one_line_naming_it(certs, tmp_path, case, says):
    """A CA file that is not a certificate once reached gRPC, which logged four lines of its own
    ("Could not load any root certificate", ...) that never named the file, then failed every
    call as UNAVAILABLE. Now: one line naming the file and what it should hold, exit status 2."""
    good = certs["ca"].read_bytes()
    der = ssl.PEM_cert_to_DER_cert(good.decode())
    content = {
        "random bytes": random.Random(0).randbytes(600),
        "random text in a PEM block": _pem("CERTIFICATE", b"garbage " * 40),
        "not base64": b"-----BEGIN CERTIFICATE-----\n%%% not base64 %%%\n-----END CERTIFICATE-----\n",
        "cut short": good[: len(good) // 2],
        "a block of a truncated certificate": _pem("CERTIFICATE", der[: len(der) // 2]),
        "a DER sequence that is not X.509": _pem("CERTIFICATE", _NOT_X509),
    }[case]
    ca = tmp_path / "ca.pem"
    ca.write_bytes(content)
    p = _benchd("info", "--target", "127.0.0.1:1", "--tls-ca", str(ca), "--timeout-s", "5")
    assert p.returncode == 2, p.stderr  # was 1: UNAVAILABLE, after gRPC's own lines
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith(f"benchd info: TLS CA {ca}: {says}"), line


def test_a_damaged_or_encrypted_key_and_a_damaged_server_certificate_are_named(certs, tmp_path):
    from cryptography.hazmat.primitives import serialization

    damaged = tmp_path / "damaged.key"
    damaged.write_bytes(_pem("PRIVATE KEY", b"garbage " * 40))
    with pytest.raises(TlsFilesError, match=f"^TLS key {damaged}: the PEM private key is damaged \\(not DER"):
        ClientTls(str(certs["ca"]), str(certs["client_cert"]), str(damaged)).credentials()
    not_a_key = tmp_path / "not-a.key"
    not_a_key.write_bytes(_pem("PRIVATE KEY", _NOT_X509))
    with pytest.raises(TlsFilesError, match=f"^TLS key {not_a_key}: not a valid PEM private key \\(cannot read it"):
        ClientTls(str(certs["ca"]), str(certs["client_cert"]), str(not_a_key)).credentials()
    key = serialization.load_pem_private_key(certs["client_key"].read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"passphrase")))
    with pytest.raises(TlsFilesError, match=f"^TLS key {encrypted}: the private key is encrypted; gRPC needs it"):
        ClientTls(str(certs["ca"]), str(certs["client_cert"]), str(encrypted)).credentials()
    cert = tmp_path / "server.pem"
    cert.write_bytes(_pem("CERTIFICATE", _NOT_X509))
    p = _benchd("serve", "--port", "0", "--cache-dir", str(tmp_path / "cache"), "--tls-cert", str(cert),
                "--tls-key", str(certs["server_key"]))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith(f"benchd serve: TLS certificate {cert}: not a valid PEM "
                                                        "certificate (OpenSSL cannot read it as X.509: ")
    # the files make_tls writes still pass, bundles of several certificates too
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(certs["ca"].read_bytes() + certs["server_cert"].read_bytes())
    ClientTls(str(bundle), str(certs["client_cert"]), str(certs["client_key"])).credentials()
