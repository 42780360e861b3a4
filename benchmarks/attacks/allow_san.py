"""Attack on ``--allow-san TYPE:VALUE``: a rule admits only a name of its
own type, compared as that type's standard compares names.

``twist schannel`` requires client certificates from a throw-away CA and
admits ``uri:``, ``ip:`` and ``email:`` rules. Clients with certificates
from that same CA connect over mutual TLS: three carry exactly the allowed
names (they must be admitted), the others are forgeries that carry an
allowed value under another type or in another spelling (a DNS SAN holding
the URI or the IP, the URI path in other case, the email's local part in
other case). The figure is how many forgeries were admitted. About 10 s::

    python benchmarks/attacks/allow_san.py
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from pathlib import Path

from _peers import CertificateAuthority, Certificates, IssuedCertificate, Twist, free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SPIFFE = "spiffe://trust.example/ns/prod/sa/Admin"
RULES = [f"uri:{SPIFFE}", "ip:10.0.0.7", "email:alice@example.com"]
LEGITIMATE = {
    "uri exact": x509.UniformResourceIdentifier(SPIFFE),
    "ip exact": x509.IPAddress(ipaddress.ip_address("10.0.0.7")),
    "email exact": x509.RFC822Name("alice@example.com"),
}
FORGED = {
    "uri path in other case": x509.UniformResourceIdentifier(SPIFFE.replace("Admin", "admin")),
    "dns holding the uri": x509.DNSName(SPIFFE),
    "dns holding the ip": x509.DNSName("10.0.0.7"),
    "uri holding the ip": x509.UniformResourceIdentifier("10.0.0.7"),
    "email local part in other case": x509.RFC822Name("Alice@example.com"),
    "dns holding the email": x509.DNSName("alice@example.com"),
}


def client_certificate(ca: CertificateAuthority, name: x509.GeneralName) -> IssuedCertificate:
    """A client certificate from *ca* whose only subjectAltName is *name*."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([name]), critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
    return IssuedCertificate(certificate, key)


def admitted(port: int, ca_file: Path, client_file: Path) -> bool:
    """Whether the client with *client_file* gets an HTTP answer (the inspector's)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca_file)
    context.load_cert_chain(client_file)
    answer = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
                while chunk := tls.recv(65536):
                    answer += chunk
    except (ConnectionError, ssl.SSLError):
        return False
    return answer.startswith(b"HTTP/1.")


def main() -> None:
    certificates = Certificates()
    files = {}
    for label, name in {**LEGITIMATE, **FORGED}.items():
        path = certificates.folder / (label.replace(" ", "-") + ".pem")
        files[label] = client_certificate(certificates.ca, name).write(path)
    port = free_port()
    rules = [argument for rule in RULES for argument in ("--allow-san", rule)]
    extra = f":clientCA={certificates.ca_file}:requireClientCertificate=yes"
    with Twist("--listen", certificates.listen(port, extra), *rules) as twist:
        twist.wait_for("listening on")
        print("rules:", " ".join(rules))
        results = {label: admitted(port, certificates.ca_file, path)
                   for label, path in files.items()}
    for label, ok in results.items():
        kind = "forged" if label in FORGED else "legitimate"
        print(f"  {kind:10} {label:32} {'ADMITTED' if ok else 'refused'}")
    forged = sum(results[label] for label in FORGED)
    legitimate = sum(results[label] for label in LEGITIMATE)
    print(f"RESULT allow-san: {forged} of {len(FORGED)} forged certificates admitted, "
          f"{legitimate} of {len(LEGITIMATE)} legitimate admitted")


if __name__ == "__main__":
    main()
