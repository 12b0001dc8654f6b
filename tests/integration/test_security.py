"""TLS, mutual TLS and bearer tokens: the right client gets in, the wrong one does not."""

from __future__ import annotations

import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from runtime.cloud.server import Security
from runtime.cloud.tails import TailHost
from runtime.device.client import ClientTLS, SplitClient
from runtime.errors import UnauthenticatedError, UnavailableError


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(
    name: str, key, issuer_name, issuer_key, *, ca: bool = False, server: bool = False
):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


class Authority:
    """A certificate authority made for one test, and certificates it signs."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = _certificate(name, self.key, self.name, self.key, ca=True)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, name: str, *, server: bool = False) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(name, key, self.name, self.key, server=server)
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


@pytest.fixture(scope="module")
def authority():
    return Authority("splitinfer test CA")


@pytest.fixture(scope="module")
def host(resnet_artifacts):
    return TailHost([resnet_artifacts[0]])


def _describe(target, **kwargs):
    with SplitClient(target, **kwargs) as client:
        return client.describe(timeout=5)


def test_tls_accepts_a_client_that_trusts_the_server_and_refuses_plaintext(authority, host, serve):
    cert, key = authority.issue("localhost", server=True)
    server = serve(host, Security(cert=cert, key=key))
    assert _describe(server.target, tls=ClientTLS(root_certificates=authority.pem)).models
    with pytest.raises(UnavailableError):
        _describe(server.target)  # plaintext to a TLS port
    stranger = Authority("another CA")
    with pytest.raises(UnavailableError):
        _describe(server.target, tls=ClientTLS(root_certificates=stranger.pem))


def test_mutual_tls_needs_a_client_certificate_from_the_trusted_ca(authority, host, serve):
    cert, key = authority.issue("localhost", server=True)
    clients = Authority("client CA")
    server = serve(host, Security(cert=cert, key=key, client_ca=clients.pem))
    client_cert, client_key = clients.issue("device-1")
    good = ClientTLS(root_certificates=authority.pem, certificate=client_cert, key=client_key)
    assert _describe(server.target, tls=good).models
    with pytest.raises(UnavailableError):
        _describe(server.target, tls=ClientTLS(root_certificates=authority.pem))  # no client cert
    forged_cert, forged_key = Authority("rogue CA").issue("device-1")
    forged = ClientTLS(root_certificates=authority.pem, certificate=forged_cert, key=forged_key)
    with pytest.raises(UnavailableError):
        _describe(server.target, tls=forged)


def test_a_bearer_token_is_required_on_every_rpc_but_health(host, serve):
    server = serve(host, Security(token="s3cret-token"))
    assert _describe(server.target, token="s3cret-token").models
    for token in (None, "wrong-token", "s3cret-token-but-longer"):
        with pytest.raises(UnauthenticatedError, match="bearer token"):
            _describe(server.target, token=token)
    with SplitClient(server.target, token="wrong") as client:
        with pytest.raises(UnauthenticatedError):
            client.probe(10, 10)
        with pytest.raises(UnauthenticatedError):
            list(client.infer_stream([("resnet", "c3", [])]))
    server.wait_healthy()  # health checks need no token


def test_a_server_that_is_gone_is_unavailable(host, serve):
    server = serve(host)
    target = server.target
    server.stop()
    server.stop = lambda: None  # already stopped
    with pytest.raises(UnavailableError) as info:
        _describe(target)
    assert info.value.code == "UNAVAILABLE"
