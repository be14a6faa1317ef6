"""TLS to the hub and to stations, verified against a private CA made here.

- A hub serving HTTPS with a certificate for 127.0.0.1 from a private CA; three stations in pull mode
  reach it with ``--hub-ca``; a federation file naming the hub by ``https://`` with ``ca_file`` runs COUNT
  and GWAS LINEAR.
- Without ``ca_file`` (the system's CAs only) the query fails at once with a message about the certificate;
  a station given a CA that did not sign the hub's certificate never connects and keeps trying.
- A station served directly over HTTPS answers ``/health`` verified by the CA, and a COUNT from a
  federation file with ``ca_file``; without it, a StationError names the certificate.
- The federation file refuses plain http to another machine unless ``allow_http``, and a station ``url``
  beside a hub.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from better.engine.errors import BetterError, InputError
from better.hub.queue import HubQueue
from better.query.federation import Federation
from better.query.remote import StationError
from better.station_api.launch import TLSFiles, child_process, free_port, hub_process, station_process
from better.station_api.secure_agg import agreement_key_text, load_or_create_agreement_key
from better.station_api.signing import load_or_create_key, public_key_text
from better.wire.envelope import ed25519_text
from tests.servers import StationSetup, better, make_station

NAMES = ("milano", "nijmegen", "barcelona")
LINEAR = "GWAS LINEAR ldl ~ age + sex"


# -- a private CA and a server certificate ----------------------------------------------------------------
def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)


def make_ca(directory: Path, common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    """A self-signed CA: its key, its certificate, and the certificate's PEM file (``directory/NAME.pem``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = directory / f"{common_name.replace(' ', '-')}.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, pem


def make_server_cert(
    directory: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, ca_pem: Path
) -> TLSFiles:
    """A server certificate for 127.0.0.1 (IP SAN) and localhost (DNS SAN), signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return TLSFiles(cert_path, key_path, ca_pem)


# -- the world: a hub over HTTPS, three stations in pull mode ---------------------------------------------
@dataclass
class Secured:
    root: Path
    tls: TLSFiles
    #: A CA that signed nothing here.
    other_ca: Path
    hub_dir: Path
    hub_url: str
    stations: list[StationSetup]
    credentials: dict[str, str]
    #: Samples at each station (rows of its phenotype file).
    samples: dict[str, int]

    def federation_file(
        self,
        name: str,
        top: list[str],
        stations: list[StationSetup] | None = None,
        timeout: float = 60,
        url: str | None = None,
    ) -> Path:
        """A federation file ``root/NAME.toml``: the ``top`` lines, then a ``[[station]]`` for each station
        (all by default; at ``url`` if given), keys pinned, tokens from the environment, ``timeout`` s each."""
        lines = list(top)
        for s in stations or self.stations:
            lines += [
                "[[station]]",
                f'name = "{s.name}"',
                *([f'url = "{url}"'] if url else []),
                f'token_env = "BETTER_TLS_TOKEN_{s.name.upper()}"',
                f'public_key = "{public_key_text(load_or_create_key(s.path))}"',
                f'agreement_key = "{agreement_key_text(load_or_create_agreement_key(s.path))}"',
                f"timeout = {timeout:g}",
            ]
        path = self.root / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def ca_file(self) -> str:
        """The CA's path relative to the federation files."""
        return str(self.tls.ca.relative_to(self.root))


@pytest.fixture(scope="module")
def secured(small_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("secured")
    pki = root / "pki"
    pki.mkdir()
    ca_key, ca_cert, ca_pem = make_ca(pki, "Test CA")
    tls = make_server_cert(pki, ca_key, ca_cert, ca_pem)
    other_ca = make_ca(pki, "Other CA")[2]
    stations = [make_station(root, name, small_cohort) for name in NAMES]
    # an untouched copy to serve directly: the queries through the hub put milano in an audit group
    shutil.copytree(stations[0].path, root / "direct" / stations[0].name)
    for s in stations:
        os.environ[f"BETTER_TLS_TOKEN_{s.name.upper()}"] = s.researcher
    samples = {n: len((small_cohort / f"{n}.pheno.tsv").read_text().splitlines()) - 1 for n in NAMES}
    hub_dir = root / "hub"
    done = better("hub", "init", "--hub", str(hub_dir))
    assert done.returncode == 0, done.stderr
    queue = HubQueue(hub_dir)  # the command line's enrol is tested in tests/test_hub.py
    credentials = {name: queue.enrol(name) for name in NAMES}
    queue.close()
    with ExitStack() as stack:
        hub_url = stack.enter_context(hub_process(hub_dir, free_port(), tls=tls))
        assert hub_url.startswith("https://127.0.0.1:")
        for s in stations:
            stack.enter_context(
                station_process(s.path, threads=1, hub=hub_url, credential=credentials[s.name], hub_ca=tls.ca)
            )
        yield Secured(root, tls, other_ca, hub_dir, hub_url, stations, credentials, samples)


def _hub_lines(secured: Secured, ca: bool) -> list[str]:
    lines = [f'hub = "{secured.hub_url}"', 'researcher_key = "researcher.key"']
    return lines + ([f'ca_file = "{secured.ca_file()}"'] if ca else [])


# -- through the hub -------------------------------------------------------------------------------------
def test_count_and_gwas_through_the_hub_over_verified_tls(secured: Secured) -> None:
    fed = Federation.from_file(secured.federation_file("verified", _hub_lines(secured, ca=True)))
    count = fed.query("COUNT samples")
    assert count["COUNT"].to_list() == [sum(secured.samples.values())]
    gwas = fed.query(LINEAR)
    assert fed.last_plan is not None and fed.last_plan.secure
    assert gwas.height > 100
    assert gwas["P"].is_not_null().sum() > 100


def test_without_the_ca_file_the_hub_certificate_is_refused(secured: Secured) -> None:
    """The system's CAs do not know the hub's: the query stops at once (a certificate that does not verify
    is no outage to wait out) and says why, rather than retrying until the stations' timeout. The hub is
    asked once before the stations (each station's request failing midway would cancel the others' TLS
    handshakes, which leaves sockets open in httpcore 1.0)."""
    path = secured.federation_file("unverified", _hub_lines(secured, ca=False), timeout=8)
    fed = Federation.from_file(path)
    t0 = time.monotonic()
    with pytest.raises(BetterError) as caught:
        fed.query("COUNT samples")
    elapsed = time.monotonic() - t0
    assert "certificate" in str(caught.value).lower(), caught.value
    assert elapsed < 5, f"took {elapsed:.1f} s to give up: {caught.value}"


def test_a_station_given_the_wrong_hub_ca_does_not_connect(secured: Secured) -> None:
    impostor = secured.root / "wrong-ca" / "milano"
    shutil.copytree(secured.root / "direct" / "milano", impostor)  # milano's files; its credential below
    log_path = impostor / "serve.log"
    cmd = [
        *(sys.executable, "-c", "from better.cli import main; main()", "station", "serve", "--station", str(impostor)),
        *("--threads", "1", "--hub", secured.hub_url, "--hub-credential-env", "BETTER_HUB_CREDENTIAL"),
        *("--hub-ca", str(secured.other_ca)),
    ]
    env = {**os.environ, "BETTER_HUB_CREDENTIAL": secured.credentials["milano"]}

    def refused_twice() -> bool:
        return log_path.exists() and log_path.read_text().count("trying again") >= 2

    with child_process(cmd, log_path, refused_twice, "station with the wrong hub CA", 30.0, env):
        pass
    log = log_path.read_text()
    assert "connected to hub" not in log
    assert log.count("CERTIFICATE_VERIFY_FAILED") >= 2, log


# -- a station served directly over HTTPS ---------------------------------------------------------------
def test_a_station_served_directly_over_tls(secured: Secured) -> None:
    milano = secured.stations[0]
    with station_process(secured.root / "direct" / milano.name, threads=1, tls=secured.tls) as url:
        assert url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=secured.tls.ca)
        assert httpx.get(f"{url}/health", verify=trusted, timeout=10).status_code == 200
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{url}/health", timeout=10)  # the system's CAs do not know this one
        verified = secured.federation_file("direct", [f'ca_file = "{secured.ca_file()}"'], [milano], url=url)
        count = Federation.from_file(verified).query("COUNT samples")
        assert count["COUNT"].to_list() == [secured.samples[milano.name]]
        unverified = secured.federation_file("direct-unverified", [], [milano], url=url)
        with pytest.raises(StationError) as caught:
            Federation.from_file(unverified).query("COUNT samples")
        assert "certificate" in str(caught.value).lower(), caught.value


# -- the federation file ---------------------------------------------------------------------------------
def _station_lines(url: str | None = None) -> list[str]:
    """``researcher_key``, then one ``[[station]]`` (its signing key pinned; at ``url`` if given)."""
    pinned = ed25519_text(Ed25519PrivateKey.generate())
    lines = ['researcher_key = "researcher.key"', "[[station]]", 'name = "milano"', 'token = "t"']
    return [*lines, f'public_key = "{pinned}"', *([f'url = "{url}"'] if url else [])]


def test_plain_http_to_another_machine_needs_allow_http(tmp_path: Path) -> None:
    refused = tmp_path / "refused.toml"
    refused.write_text("\n".join(['hub = "http://10.1.2.3:8800"', *_station_lines()]) + "\n")
    with pytest.raises(InputError) as caught:
        Federation.from_file(refused)
    message = str(caught.value)
    assert "https" in message and "allow_http" in message, message
    allowed = tmp_path / "allowed.toml"
    allowed.write_text("\n".join(['hub = "http://10.1.2.3:8800"', "allow_http = true", *_station_lines()]) + "\n")
    fed = Federation.from_file(allowed)
    assert [s.url for s in fed.stations] == ["hub://milano"]
    assert fed.stations[0].hub is not None and fed.stations[0].hub.url == "http://10.1.2.3:8800"


def test_a_station_url_beside_a_hub_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "both.toml"
    path.write_text("\n".join(['hub = "https://hub.example.org"', *_station_lines("https://milano.example.org")]))
    with pytest.raises(InputError) as caught:
        Federation.from_file(path)
    message = str(caught.value)
    assert "milano" in message and "url" in message and "hub" in message, message
