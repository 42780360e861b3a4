"""The two ways through pyOpenSSL (txschannel._openssl): its internals, or
its public API only. The whole suite runs both ways (.ci/run); these tests
check the switch itself, and what the public path does differently."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from tests.support.contexts import NAME, authority, client_credentials, server_credentials
from tests.support.handshake import handshake
from txschannel import ClientContext, SecurityError, ServerContext, Status, _openssl


def _run(script: str, variable: str | None) -> str:
    """Run *script* in a fresh interpreter, with TXSCHANNEL_PUBLIC_API set
    to *variable* (or unset); its standard output."""
    environment = dict(os.environ)
    environment.pop(_openssl.PUBLIC_API_VARIABLE, None)
    if variable is not None:
        environment[_openssl.PUBLIC_API_VARIABLE] = variable
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, environment.get("PYTHONPATH")) if p
    )
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=environment,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(result.stderr.decode("utf-8", "replace"))
    return result.stdout.decode().strip()


_WHICH = "from txschannel import _openssl; print(_openssl.FAST)"

# A handshake, data both ways, a close_notify: through the whole context.
_EXCHANGE = """
from tests.support.handshake import connected
pair = connected()
assert pair.client_to_server(b"ping") == b"ping"
assert pair.server_to_client(b"pong" * 10000) == b"pong" * 10000
print(pair.client.context.attributes.protocol)
"""


class SwitchTests(SynchronousTestCase):
    """One switch, decided at import, that the variable forces."""

    def test_the_active_path_matches_the_variable(self) -> None:
        if _openssl.public_api_requested():
            self.assertFalse(_openssl.FAST)
        else:
            self.assertEqual(_openssl.FAST, _openssl._internals() is not None)

    def test_the_variable_is_read_as_a_flag(self) -> None:
        variable = _openssl.PUBLIC_API_VARIABLE
        for value, requested in (
            (None, False), ("", False), ("0", False), (" 0 ", False),
            ("1", True), ("yes", True), ("true", True),
        ):
            environ = {} if value is None else {variable: value}
            self.assertEqual(_openssl.public_api_requested(environ), requested, value)

    def test_the_variable_is_honoured_in_a_subprocess(self) -> None:
        # (With the pyOpenSSL this project pins as its lower bound and
        # tests with, the internals are there: "True" without the variable.)
        available = str(_openssl._internals() is not None)
        self.assertEqual(_run(_WHICH, "1"), "False")
        self.assertEqual(_run(_WHICH, "0"), available)
        self.assertEqual(_run(_WHICH, None), available)

    def test_the_internals_are_found_in_the_pyopenssl_tested_with(self) -> None:
        # Every check of _internals() must pass on the pyOpenSSL installed
        # here, or the whole suite would quietly run the public path only.
        self.assertIsNotNone(_openssl._internals())
        self.assertEqual(_run(_WHICH, None), "True")

    def test_the_public_path_works_from_a_subprocess(self) -> None:
        self.assertEqual(_run(_EXCHANGE, "1"), "TLSv1.3")

    def test_missing_internals_choose_the_public_path(self) -> None:
        # A pyOpenSSL whose binding txschannel cannot reach: the public path
        # is taken without being asked for, and works.
        script = textwrap.dedent("""
            import sys, types
            import OpenSSL.SSL
            sys.modules["OpenSSL._util"] = types.ModuleType("OpenSSL._util")
            from txschannel import _openssl
            print(_openssl.FAST)
        """) + _EXCHANGE
        self.assertEqual(_run(script, None).split(), ["False", "TLSv1.3"])


class GroupTests(SynchronousTestCase):
    """On the public path OpenSSL's default groups are offered; a group
    outside txschannel's list is still never used."""

    def test_a_server_that_only_has_p521_is_refused(self) -> None:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_tmp_ecdh(ec.SECP521R1())
        pem = authority().server_pem
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        context.use_certificate(x509.load_pem_x509_certificate(pem))
        context.use_privatekey(load_pem_private_key(pem, None))  # type: ignore[arg-type]
        server = SSL.Connection(context, None)
        server.set_accept_state()
        client = ClientContext(client_credentials(), NAME)
        step = client.initialize()
        with self.assertRaises(SecurityError) as caught:
            for _ in range(4):
                server.bio_write(step.token)
                try:
                    server.do_handshake()
                except SSL.WantReadError:
                    pass
                except SSL.Error:
                    pass
                try:
                    answer = server.bio_read(1 << 16)
                except SSL.WantReadError:
                    answer = b""
                step = client.initialize(step.extra + answer)
        self.assertEqual(caught.exception.status, Status.ALGORITHM_MISMATCH)
        if not _openssl.FAST:
            self.assertIn("secp521r1", caught.exception.reason.lower())

    def test_the_groups_of_a_handshake_between_contexts_are_ours(self) -> None:
        pair = handshake(ClientContext(client_credentials(), NAME),
                         ServerContext(server_credentials()))
        self.assertIn(pair.client.context.attributes.group, ("X25519MLKEM768", "x25519"))
