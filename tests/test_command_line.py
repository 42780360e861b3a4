"""What ``twist schannel`` and ``python -m txschannel`` say on their own
command lines: ``--version``, ``--help`` and the wording of mistakes."""

from __future__ import annotations

import re

import cryptography
import OpenSSL
from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

import txschannel
from tests.test_tap import run_twist


class VersionTests(SynchronousTestCase):
    """``twist schannel --version`` names every version a bug report needs."""

    def test_version_names_txschannel_pyopenssl_cryptography_and_openssl(self) -> None:
        result = run_twist("--version")
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], f"txschannel {txschannel.__version__}")
        self.assertIn(f"pyOpenSSL {OpenSSL.__version__}", lines)
        self.assertTrue(
            any(line.startswith(f"cryptography {cryptography.__version__}") for line in lines),
            lines,
        )
        self.assertIn(SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(), lines)
        self.assertTrue(any(re.fullmatch(r"Twisted \d+\.\d+\.\d+\S*", line) for line in lines))
