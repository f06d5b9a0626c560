"""The HTTPS certificate of the admin side.

The admin page, its login and the admin API are served over HTTPS so that no
one else on the network (an open hotspot, a venue LAN) reads the password,
the token, the session cookie or the CSRF token. Listening stays on plain
HTTP as well, so a phone never meets a certificate warning.

``load_certificate(...)`` returns the certificate to serve:

- ``[server] certfile`` and ``keyfile`` when the venue has its own (PEM; the
  certificate file may hold the chain after it);
- otherwise ``<state_dir>/tls/cert.pem`` and ``key.pem``, made once at the
  first start by Debian's ``openssl`` command (no crypto of our own): an
  ECDSA P-256 key and a self-signed certificate for ``<hostname>.local``,
  ``<hostname>`` and the box's addresses at that moment, valid 20 years.
  It is kept across restarts (its fingerprint is what an admin checks once);
  a damaged or mismatched pair is made again. Delete the folder to get a new
  one.

The certificate's SHA-256 fingerprint (``AB:CD:…``, what browsers show) is
logged at every start, written next to the setup code and shown on the admin
page, so an admin can tell the box's own certificate from a stranger's.
Standard library only; nothing here imports the engine.
"""
from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit

from .config import ConfigError
from .store import atomic_write_files

__all__ = ["Certificate", "TLSError", "load_certificate", "make_certificate", "keep_certificate",
           "own_pair", "certificate_addresses", "fingerprint", "local_addresses", "host_label",
           "TLS_DIR", "VALID_DAYS"]

TLS_DIR = "tls"
CERT_NAME, KEY_NAME = "cert.pem", "key.pem"   # a made pair, in its folder
VALID_DAYS = 7305   # 20 years: a box in a cupboard outlives a short certificate
MAX_NAMES = 32


class TLSError(ConfigError):
    """The certificate cannot be made or used; the message says why."""


@dataclass(frozen=True)
class Certificate:
    certfile: Path
    keyfile: Path
    fingerprint: str        # SHA-256 of the DER certificate, "AB:CD:..."
    made: bool = False      # made at this start (False: configured, or made before)


def fingerprint(pem: str) -> str:
    """The SHA-256 fingerprint of the first certificate in ``pem``."""
    match = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem, re.S)
    if match is None:
        raise ValueError("no PEM certificate")
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(match.group(0))).digest()
    return ":".join(f"{b:02X}" for b in digest)


def host_label(hostname: str | None = None) -> str:
    """The box's host name as a DNS label (what avahi announces as .local)."""
    name = (hostname or socket.gethostname()).split(".")[0].lower()
    return re.sub(r"[^a-z0-9-]+", "-", name).strip("-")[:63] or "appliance"


def local_addresses() -> list[str]:
    """The box's own IPv4 and global IPv6 addresses, loopback and link-local
    left out (a certificate cannot name an IPv6 zone), in interface order."""
    out: list[str] = []
    SIOCGIFADDR = 0x8915
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                packed = fcntl.ioctl(sock.fileno(), SIOCGIFADDR,
                                     struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
        out.append(socket.inet_ntoa(packed[20:24]))
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as f:
            for line in f:
                word = line.split()[0]
                out.append(str(ipaddress.IPv6Address(bytes.fromhex(word))))
    except (OSError, ValueError, IndexError):
        pass
    keep = []
    for text in out:
        ip = ipaddress.ip_address(text)
        if ip.is_loopback or ip.is_link_local or ip.is_unspecified or text in keep:
            continue
        keep.append(text)
    return keep


def certificate_addresses(captive_redirect: str = "") -> list[str]:
    """The addresses a certificate made now names: the box's own, and the
    hotspot's (server.captive_redirect's host: it may not be up yet)."""
    addresses = local_addresses()
    host = urlsplit(captive_redirect).hostname if captive_redirect else None
    if host and host not in addresses:
        addresses.append(host)
    return addresses


def own_pair(state_dir: Path | str) -> tuple[Path, Path]:
    """Where a box keeps the certificate it made, and its key."""
    folder = Path(state_dir) / TLS_DIR
    return folder / CERT_NAME, folder / KEY_NAME


def _pair_ok(certfile: Path, keyfile: Path) -> str | None:
    """The fingerprint when the files are a certificate and its key, else None."""
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(certfile), str(keyfile))
        return fingerprint(certfile.read_text(encoding="ascii"))
    except (OSError, ssl.SSLError, ValueError, UnicodeDecodeError):
        return None


def keep_certificate(folder: Path, cert_pem: bytes, key_pem: bytes) -> Certificate:
    """Keep a pair as ``folder/cert.pem`` and ``folder/key.pem`` (mode 0600,
    the folder 0700): both replace the old ones only once both are complete
    on disk. Should a power cut fall between the two, load_certificate finds
    a certificate and key that do not belong together and makes a new pair."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_files(folder, {KEY_NAME: (key_pem, 0o600), CERT_NAME: (cert_pem, 0o644)})
    except OSError as error:
        raise TLSError(f"cannot keep the HTTPS certificate in {str(folder)!r}: "
                       f"{error.strerror or error}") from None
    found = _pair_ok(folder / CERT_NAME, folder / KEY_NAME)
    if found is None:
        raise TLSError("the HTTPS certificate and key kept cannot be loaded")
    return Certificate(folder / CERT_NAME, folder / KEY_NAME, found)


def make_certificate(folder: Path, hostname: str, addresses: Iterable[str] = (),
                     days: int = VALID_DAYS) -> Certificate:
    """Make an ECDSA P-256 key and a self-signed server certificate for it
    (CA:FALSE, serverAuth) with Debian's openssl, kept in ``folder``
    (keep_certificate)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TLSError("cannot make the HTTPS certificate: the openssl command is not "
                       "installed (Debian package openssl); or set server.certfile and "
                       "server.keyfile")
    label = host_label(hostname)
    names = [f"DNS:{label}.local", f"DNS:{label}"]
    for text in addresses:
        try:
            names.append(f"IP:{ipaddress.ip_address(text)}")
        except ValueError:
            continue
    names = list(dict.fromkeys(names))[:MAX_NAMES]
    conf = "\n".join([
        "[req]", "distinguished_name = dn", "x509_extensions = ext", "prompt = no", "",
        "[dn]", f"CN = {label}.local", "O = Listening appliance", "",
        "[ext]", "basicConstraints = critical, CA:FALSE",
        "keyUsage = critical, digitalSignature", "extendedKeyUsage = serverAuth",
        "subjectKeyIdentifier = hash", f"subjectAltName = {', '.join(names)}", ""])
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".made-") as tmp:
            work = Path(tmp)
            (work / "req.cnf").write_text(conf, encoding="ascii")
            result = subprocess.run(
                [openssl, "req", "-x509", "-new", "-config", str(work / "req.cnf"),
                 "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-sha256", "-days", str(days),
                 "-keyout", str(work / KEY_NAME), "-out", str(work / CERT_NAME)],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OPENSSL_CONF": "/dev/null"})
            if result.returncode != 0:
                last = (result.stderr.strip().splitlines() or ["no message"])[-1]
                raise TLSError(f"cannot make the HTTPS certificate: openssl: {last[:200]}")
            cert_pem, key_pem = (work / CERT_NAME).read_bytes(), (work / KEY_NAME).read_bytes()
    except subprocess.TimeoutExpired:
        raise TLSError("cannot make the HTTPS certificate: openssl took over 60 s") from None
    except OSError as error:
        raise TLSError(f"cannot make the HTTPS certificate in {str(folder)!r}: "
                       f"{error.strerror or error}") from None
    return replace(keep_certificate(folder, cert_pem, key_pem), made=True)


def load_certificate(state_dir: Path, certfile: str = "", keyfile: str = "", *,
                     hostname: str | None = None,
                     addresses: Iterable[str] | None = None) -> Certificate:
    """The configured certificate (``certfile``/``keyfile``), or the one made
    in ``<state_dir>/tls`` (made now when it is missing or unusable)."""
    if certfile or keyfile:
        if not (certfile and keyfile):
            raise TLSError("server.certfile and server.keyfile go together: set both or neither")
        cert, key = Path(certfile).expanduser(), Path(keyfile).expanduser()
        found = _pair_ok(cert, key)
        if found is None:
            raise TLSError(f"server.certfile {certfile!r} and server.keyfile {keyfile!r} are "
                           "not a readable PEM certificate and its private key")
        return Certificate(cert, key, found)
    cert, key = own_pair(state_dir)
    found = _pair_ok(cert, key)
    if found is not None:
        return Certificate(cert, key, found)
    return make_certificate(cert.parent, host_label(hostname),
                            local_addresses() if addresses is None else addresses)
