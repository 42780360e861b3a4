"""``--allow-cn`` / ``--allow-san``: which verified client certificates may pass.

The TLS handshake checks that a CA the listen endpoint trusts (``clientCA=``)
signed the client's certificate; :class:`AccessPolicy` then decides whether
that certificate names one of the identities on the allow-list.

A subjectAltName rule has a type: ``dns:``, ``uri:``, ``ip:`` or ``email:``
(:func:`parse_allowed_name`; a value without a type is a DNS name), and it
only ever matches a name of that same type in the certificate, compared the
way that type's standard says two names are the same:

- DNS names without case, without a trailing dot, in their ASCII (IDNA
  A-label) form, as certificates carry them. Never as patterns: a
  certificate's wildcard ``*.example`` is not ``x.example``.
- URIs exactly, except that the scheme and the host are compared without
  case (RFC 3986, section 6.2.2.1). The path is not: the SPIFFE IDs
  ``.../sa/Admin`` and ``.../sa/admin`` are different identities.
- IP addresses as addresses (``::1`` is ``0:0::1``); an IPv4 address and
  an IPv6 one are never the same, mapped or not.
- Email addresses with the local part exactly and the domain as a DNS name.

Values that no certificate could legitimately match under their type (a
"DNS name" that is an IP address or a URI, a wildcard, an unknown type) are
refused when the rule is made, with a message saying what to write instead.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import NameOID

from txschannel.validation import host_a_label

__all__ = ["SAN_TYPES", "AccessPolicy", "AllowedName", "parse_allowed_name"]

#: The subjectAltName types a rule can name, as they are written in one.
SAN_TYPES = ("dns", "uri", "ip", "email")

_TYPE_PREFIX = re.compile(r"([A-Za-z][A-Za-z0-9 ]*?)\s*:")
#: OpenSSL's names for the other GeneralName types, which no rule can name.
_UNSUPPORTED_TYPES = {
    "rid", "registeredid", "dirname", "othername", "x400address", "edipartyname",
}
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(.*)", re.DOTALL)
#: One DNS label in ASCII. Underscores are allowed: internal names
#: (``_service.example``) use them, and they can do no harm in an exact match.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9_])?")
#: Characters a SAN or CN is written with unquoted in a refusal; anything
#: else (a comma, a semicolon, a space, a quote) could make one name read
#: as two in the log, so such a name is quoted.
_PLAIN = re.compile(r"[A-Za-z0-9._\-:/@+=%~?#&\[\]!$*']*")


@dataclass(frozen=True)
class AllowedName:
    """One ``--allow-san`` rule: a subjectAltName type and a value in its compared form.

    :ivar kind: ``"dns"``, ``"uri"``, ``"ip"`` or ``"email"``.
    :ivar value: the value as it is compared: a lower-case A-label DNS name,
        a URI with its scheme and host in lower case, an address in its
        canonical text, or an email address with its domain in lower case.
    """

    kind: str
    value: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


def parse_allowed_name(text: str) -> AllowedName:
    """Read one ``--allow-san`` value: ``TYPE:VALUE``, or a DNS name alone.

    :raises ValueError: the value is empty, of an unknown type, not a valid
        name of its type, or could only ever match a name of another type
        (an untyped ``10.0.0.7`` or ``spiffe://...``); the message says what
        to write instead, without the option's name.
    """
    example = "such as dns:client.example.com, uri:spiffe://example.org/app, ip:10.0.0.7"
    if not text.strip():
        raise ValueError(f"expected TYPE:VALUE with TYPE dns, uri, ip or email, {example}")
    if _is_address(text):
        # "::1" and "fe80::1" would otherwise read as a type.
        raise ValueError(
            f"an IP address: write ip:{text} (a value without a type is a DNS name, "
            "and a DNS name is never an address)"
        )
    prefix = _TYPE_PREFIX.match(text)
    if prefix is None:
        return AllowedName("dns", _configured_dns(text))
    kind = prefix.group(1).lower()
    value = text[prefix.end():]
    if kind not in SAN_TYPES:
        if kind == "ip address":  # OpenSSL's spelling
            raise ValueError(f"OpenSSL's IP Address: prefix; write ip:{value.strip()}")
        if kind.replace(" ", "") in _UNSUPPORTED_TYPES:
            raise ValueError(
                f"{prefix.group(1)} names cannot be allowed: only dns, uri, ip and email"
            )
        raise ValueError(
            f"unknown type {prefix.group(1)!r}: expected dns, uri, ip or email "
            f"(a URI is written uri:{text})"
        )
    if not value:
        raise ValueError(f"{kind}: needs a value, {example}")
    if kind == "dns":
        return AllowedName("dns", _configured_dns(value))
    if kind == "ip":
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
        if getattr(address, "scope_id", None):
            raise ValueError(f"{value!r}: a certificate's address has no %scope")
        return AllowedName("ip", str(address))
    if kind == "uri":
        if not value.isascii() or any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError(
                f"{value!r} is not a URI: it has spaces, control characters or non-ASCII "
                "letters (percent-encode them, as the certificate does)"
            )
        key = _uri_key(value)
        if key is None:
            raise ValueError(f"{value!r} is not a URI: it needs a scheme, such as spiffe://")
        return AllowedName("uri", key)
    local, at, domain = value.rpartition("@")
    if not at or not local:
        raise ValueError(f"{value!r} is not an email address (local@domain)")
    return AllowedName("email", f"{local}@{_configured_dns(domain)}")


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _configured_dns(name: str) -> str:
    """*name* as a rule compares it; refused when no DNS SAN could rightly hold it."""
    if _is_address(name):
        raise ValueError(f"{name!r} is an IP address, never a DNS name: write ip:{name}")
    if "://" in name or name.lower().startswith(("urn:", "spiffe:")):
        raise ValueError(f"{name!r} is a URI, never a DNS name: write uri:{name}")
    if "@" in name:
        raise ValueError(f"{name!r} is an email address: write email:{name}")
    if "*" in name:
        raise ValueError(
            f"{name!r}: wildcards are not patterns here; an allow-list names exact "
            "identities (a certificate's wildcard SAN never matches a rule)"
        )
    key = _dns_key(name)
    if key is None or not all(_LABEL.fullmatch(label) for label in key.split(".")):
        raise ValueError(f"{name!r} is not a valid DNS name")
    if len(key) > 253:
        raise ValueError(f"{name!r} is longer than a DNS name can be (253)")
    return key


def _dns_key(name: str) -> str | None:
    """*name* as DNS names are compared: lower case, no trailing dot, A-labels.

    ``None`` for a name that cannot be written in ASCII.
    """
    if name.endswith("."):
        name = name[:-1]
    if name.isascii():
        return name.lower()
    try:
        # The client's own rule for target names (UTS 46, nontransitional),
        # so that a rule admits exactly what a certificate for it carries.
        return host_a_label(name)
    except ValueError:
        return None


def _uri_key(uri: str) -> str | None:
    """*uri* with its scheme and host in lower case; ``None`` without a scheme.

    Nothing else changes: RFC 3986 makes only those two case-insensitive,
    and percent-encoding is left as it is (a certificate is compared as
    issued, not as a browser would normalise it).
    """
    match = _SCHEME.fullmatch(uri)
    if match is None:
        return None
    scheme, rest = match.group(1).lower(), match.group(2)
    if not rest.startswith("//"):
        return f"{scheme}:{rest}"
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop, 2)
        if found != -1:
            end = min(end, found)
    authority, tail = rest[2:end], rest[end:]
    userinfo, at, host = authority.rpartition("@")
    # The port, after the host, is digits: lowering it changes nothing.
    return f"{scheme}://{userinfo}{at}{host.lower()}{tail}"


# -- what the certificate says -------------------------------------------------


def subject_alt_names(certificate: x509.Certificate) -> tuple[list[AllowedName], int]:
    """The DNS, URI, IP and email subjectAltNames of *certificate*, as written in it.

    :return: the names (values as the certificate has them, not yet
        compared forms) and how many names of other types it has.
    """
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return [], 0
    names: list[AllowedName] = []
    others = 0
    for general in extension.value:
        if isinstance(general, x509.DNSName):
            names.append(AllowedName("dns", general.value))
        elif isinstance(general, x509.UniformResourceIdentifier):
            names.append(AllowedName("uri", general.value))
        elif isinstance(general, x509.IPAddress):
            names.append(AllowedName("ip", str(general.value)))
        elif isinstance(general, x509.RFC822Name):
            names.append(AllowedName("email", general.value))
        else:
            others += 1
    return names, others


def _compared(name: AllowedName) -> AllowedName | None:
    """A certificate's name in the form rules are kept in; ``None`` if it can match none."""
    value: str | None
    if name.kind == "dns":
        # An A-label name in any case; a certificate that carries a
        # non-ASCII DNS name is malformed (IA5String), so it matches nothing.
        value = _dns_key(name.value) if name.value.isascii() else None
    elif name.kind == "uri":
        value = _uri_key(name.value)
    elif name.kind == "ip":
        value = name.value  # already canonical: str() of an ipaddress object
    else:
        local, at, domain = name.value.rpartition("@")
        key = _dns_key(domain) if domain.isascii() else None
        value = f"{local}@{key}" if at and local and key is not None else None
    return None if value is None else AllowedName(name.kind, value)


def common_names(certificate: x509.Certificate) -> list[str]:
    """The subject common names of *certificate*, in order."""
    return [
        str(attribute.value)
        for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ]


def _shown(text: str) -> str:
    """*text* (from the certificate) as one unmistakable item of a list in a refusal.

    Quoted, with quotes doubled, when it holds a separator; control
    characters are escaped later, by the log line (PeerText), so none is
    added here.
    """
    if _PLAIN.fullmatch(text) and text:
        return text
    return '"' + text.replace('"', '""') + '"'


# -- the policy ------------------------------------------------------------------


@dataclass(frozen=True)
class AccessPolicy:
    """Which client certificates may use a tunnel (``--allow-cn``, ``--allow-san``).

    A client is admitted when its certificate's subject common name is one
    of *common_names* (exactly), or one of its subjectAltNames matches one of
    *alt_names* (see the module's documentation for how each type is
    compared). With both empty, everyone is admitted. The chain itself is
    checked by the TLS handshake (the endpoint's ``clientCA``), not here.

    :param alt_names: rules from :func:`parse_allowed_name`; a plain string
        is read by it too.
    :raises ValueError: a string in *alt_names* that :func:`parse_allowed_name`
        refuses.
    """

    common_names: tuple[str, ...] = ()
    alt_names: tuple[AllowedName | str, ...] = ()
    _wanted: frozenset[AllowedName] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parsed = tuple(
            n if isinstance(n, AllowedName) else parse_allowed_name(n) for n in self.alt_names
        )
        object.__setattr__(self, "alt_names", parsed)
        object.__setattr__(self, "_wanted", frozenset(parsed))

    @property
    def active(self) -> bool:
        """Whether any rule was given."""
        return bool(self.common_names or self.alt_names)

    def refusal(self, certificate: x509.Certificate | None) -> str | None:
        """Why *certificate* is refused, or ``None`` when it is admitted.

        The reason quotes the certificate's names as they are (each SAN
        with its type, a name holding a separator in quotes); the log line
        that shows it escapes what is not printable.
        """
        if not self.active:
            return None
        if certificate is None:
            return "no client certificate (the listen endpoint needs clientCA=...)"
        cns = common_names(certificate)
        shown_cns = ", ".join(_shown(cn) for cn in cns)
        if self.common_names and len(cns) > 1:
            # Which of them would a rule be about? Software disagrees (the
            # first, the last, any), so a subject such as "CN=bob, CN=alice"
            # is refused outright rather than read the way that admits it.
            return (
                f"client certificate {certificate.subject.rfc4514_string()} has "
                f"{len(cns)} common names ({shown_cns}); --allow-cn admits only "
                "certificates with exactly one"
            )
        if any(cn in self.common_names for cn in cns):
            return None
        sans, others = subject_alt_names(certificate)
        if any(_compared(name) in self._wanted for name in sans):
            return None
        rules = []
        if self.common_names:
            rules.append(f"--allow-cn {', '.join(self.common_names)}")
        if self.alt_names:
            rules.append(f"--allow-san {', '.join(str(n) for n in self.alt_names)}")
        shown_sans = ", ".join(f"{name.kind}:{_shown(name.value)}" for name in sans)
        if others:
            shown_sans += f"{', ' if sans else ''}{others} of other types"
        return (
            f"client certificate {certificate.subject.rfc4514_string() or '(empty subject)'} "
            f"(CN {shown_cns or 'none'}; SAN {shown_sans or 'none'}) "
            f"matches none of {' / '.join(rules)}"
        )
