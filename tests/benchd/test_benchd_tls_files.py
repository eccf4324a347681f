"""TLS file sets are checked before gRPC sees them: gRPC's C core aborts the whole process on a
client certificate without its key, and says only "Failed to bind" for a key that does not match
its certificate. Each case is one line naming the file, exit status 2, the process alive."""

from __future__ import annotations

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


@pytest.mark.parametrize("which, says", [("ca", "TLS CA {p}: not a PEM certificate"),
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
