"""Make certificates to try txschannel with: a throw-away CA and what it signs.

Run it in an empty folder: ``python certificates.py``. It writes

- ``ca.pem``: the CA's certificate, for clients to trust (``trustRoots=ca.pem``,
  ``curl --cacert ca.pem``);
- ``ca-key.pem``: the CA's key and certificate (mode 0600), for
  ``renew_certificate.py`` to issue a renewed server certificate; whoever
  reads it can make certificates that trust ``ca.pem`` accepts;
- ``server.pem``: key and certificate for localhost, 127.0.0.1 and ::1;
- ``alice.pem`` and ``bob.pem``: client certificates (key and certificate)
  with those common names, for mutual TLS.

This is for trying things and for tests, not for production.
"""

from txschannel.testing import CertificateAuthority

ca = CertificateAuthority()
ca.write("ca.pem")
ca.write_key("ca-key.pem")
ca.issue("localhost", "127.0.0.1", "::1").write("server.pem")
ca.issue(common_name="alice").write("alice.pem")
ca.issue(common_name="bob").write("bob.pem")
print("wrote ca.pem, ca-key.pem, server.pem, alice.pem and bob.pem")
