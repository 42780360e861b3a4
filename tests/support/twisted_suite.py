"""Which of Twisted's own TLS transport tests txschannel's transport does not
pass, and why: read by tests.test_twisted_tls_suite (which marks them) and by
the README check (which counts them).
"""

from __future__ import annotations

_PRIVATE = "inspects or replaces a private attribute of Twisted's class: "


#: ``Class.test_name`` -> why txschannel's transport does not pass it.
KNOWN_DIFFERENCES: dict[str, str] = {
    "TLSMemoryBIOTests.test_connectionLostOnlyAfterUnderlyingCloses": (
        _PRIVATE + "it calls _tlsShutdownFinished()"
    ),
    "TLSMemoryBIOTests.test_errorWriting": (
        _PRIVATE + "it replaces _tlsConnection to make send() fail; txschannel's "
        "OpenSSL connection lives inside the security context"
    ),
    "TLSMemoryBIOTests.test_loseConnectionTwice": (
        _PRIVATE + "it wraps _shutdownTLS() to count calls"
    ),
    "TLSMemoryBIOTests.test_loseConnectionAfterConnectionLost": (
        _PRIVATE + "it wraps _shutdownTLS() to count calls"
    ),
    "TLSProducerTests.test_nonStreamingProducer": (
        _PRIVATE + "it expects Twisted's _PullToPush inside transport.producer._producer"
    ),
    "TLSProducerTests.test_streamingProducerBothTransportsDecideToPause": (
        "it injects a fake OpenSSL Connection with only the methods Twisted's class "
        "calls; txschannel's security context calls more of the Connection API "
        "(get_protocol_version_name, ...) and fails on the fake"
    ),
}


#: Tests in the substituted classes that never touch the transport.
NOT_APPLICABLE: dict[str, str] = {
    "TLSProducerTests.test_interface": (
        "tests Twisted's private _ProducerMembrane class directly"
    ),
}
