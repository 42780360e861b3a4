"""Helpers shared by the test modules; no test module imports another.

One module per concept:

- :mod:`tests.support.peers`: external peers (``openssl``, ``curl`` ...),
  free loopback ports, waiting for a port, small Python backends.
- :mod:`tests.support.certs`: certificate authorities, leaves and chains
  built with ``cryptography``, PEM writing, encrypted keys.
- :mod:`tests.support.hellos`: hand-built TLS records and ClientHellos.
- :mod:`tests.support.png`: a minimal PNG reader for the inspector's images.
"""
