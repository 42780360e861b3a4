"""The inspector: an HTTP/1.x page describing the connection it arrived on.

``twist schannel`` without ``--connect`` serves this. Any method and any path
get the same answer: what the security context of *this* connection
negotiated (protocol, cipher, key exchange group, ALPN, server name, client
certificate, session resumption), the handshake as a ladder of flights with
the status of each ``AcceptSecurityContext`` call, and, when the listener
keeps ClientHellos (``SchannelFactory(..., keep_client_hello=True)``), what
the client offered and its JA4 fingerprint.

The answer is plain text, HTML or JSON, chosen by the request's ``Accept``
header (or ``?format=text|html|json``); the three carry the same facts:
:mod:`~txschannel.terminator.inspector.describe` gathers them,
:mod:`~txschannel.terminator.inspector.text` and
:mod:`~txschannel.terminator.inspector.html` lay them out, and
:mod:`~txschannel.terminator.inspector.site` answers HTTP.
"""

from txschannel.terminator.inspector.describe import describe, describe_client_hello
from txschannel.terminator.inspector.html import render_html
from txschannel.terminator.inspector.site import InspectorResource, InspectorSite
from txschannel.terminator.inspector.text import render_text

__all__ = [
    "InspectorResource",
    "InspectorSite",
    "describe",
    "describe_client_hello",
    "render_text",
    "render_html",
]
