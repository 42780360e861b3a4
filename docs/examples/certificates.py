"""Make certificates to try txschannel with: a throw-away CA and what it signs.

Run it in an empty folder: ``python certificates.py``. It writes

- ``ca.pem``: the CA's certificate, for clients to trust (``trustRoots=ca.pem``,
  ``curl --cacert ca.pem``);
- ``server.pem``: key and certificate for localhost, 127.0.0.1 and ::1;
- ``alice.pem`` and ``bob.pem``: client certificates (key and certificate)
  with those common names, for mutual TLS.

The CA's key is never written anywhere: nothing but these files will ever
trust it. This is for trying things and for tests, not for production.
"""

from txschannel.testing import CertificateAuthority

ca = CertificateAuthority()
ca.write("ca.pem")
ca.issue("localhost", "127.0.0.1", "::1").write("server.pem")
ca.issue(common_name="alice").write("alice.pem")
ca.issue(common_name="bob").write("bob.pem")
print("wrote ca.pem, server.pem, alice.pem and bob.pem")
