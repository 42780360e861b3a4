"""Issue a renewed server certificate with the CA of ``certificates.py``.

``python renew_certificate.py`` writes ``new-server.pem`` (key and
certificate for localhost, 127.0.0.1 and ::1, with a new key), signed by the
CA kept in ``ca-key.pem``, so clients that trust ``ca.pem`` accept it.
"""

from txschannel.testing import CertificateAuthority

ca = CertificateAuthority.load("ca-key.pem")
ca.issue("localhost", "127.0.0.1", "::1").write("new-server.pem")
print("wrote new-server.pem")
