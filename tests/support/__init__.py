"""Helpers shared by the test modules; no test module imports another.

One module per concept:

Processes and peers
  - :mod:`~tests.support.peers`: external peers (``openssl``, ``curl`` ...),
    free loopback ports, waiting for a port, small Python backends.
  - :mod:`~tests.support.twist`: a real ``twist schannel`` process
    (:class:`Twist`), bad command lines (:func:`run_twist`,
    :func:`assert_one_line`), ``curl``, the served certificate's
    fingerprint, the ``--workers`` start lines.
  - :mod:`~tests.support.edges`: :class:`Edge`, the base class of the tests
    that put ``twist schannel`` in front of a backend process, and the
    backends (echo, recorders).
  - :mod:`~tests.support.workers`: a run's CA and certificate, an echo
    backend and one exchange through ``--workers``.
  - :mod:`~tests.support.systemd`: systemd's side of ``$NOTIFY_SOCKET``.
  - :mod:`~tests.support.probe`: running ``python -m txschannel probe``.

In-memory contexts
  - :mod:`~tests.support.contexts`: the credential factories (one trustme CA
    per key type for the run; expired and self-signed certificates).
  - :mod:`~tests.support.handshake`: the handshake loop between two
    contexts (or a context and Python's ``ssl``), failing handshakes, and
    the validation tests' handshake that reports how each side ended.
  - :mod:`~tests.support.pyssl`: Python's ``ssl`` over memory BIOs as a peer.
  - :mod:`~tests.support.fetch`: one request over a socket with a
    ClientContext.
  - :mod:`~tests.support.faults`: the fault tests' recording protocol and
    credentials (importable by their child process).
  - :mod:`~tests.support.endpoints`: a server protocol that says what the
    connection negotiated.

Certificates and bytes
  - :mod:`~tests.support.certs`: certificate authorities, leaves and chains
    built with ``cryptography``, PEM writing, encrypted keys.
  - :mod:`~tests.support.ocsp`: a CA whose certificates name an OCSP
    responder, its index, and OCSP responses.
  - :mod:`~tests.support.hellos`: hand-built ClientHellos and records, and
    the JA4 shape.
  - :mod:`~tests.support.png`: a minimal PNG reader for the inspector's
    images.
  - :mod:`~tests.support.twisted_suite`: which of Twisted's own TLS tests
    txschannel's transport does not pass, and why.

Source
  - :mod:`~tests.support.privates`: where a txschannel module reads another
    module's (or a library's) private names, read from the source.
"""
