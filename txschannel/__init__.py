"""txschannel: the Schannel/SSPI security-context model as a TLS transport for Twisted.

The names here are the sans-IO core and import no Twisted. The Twisted
transport is :mod:`txschannel.protocol`, the endpoint strings are
:mod:`txschannel.endpoints`, and test helpers are :mod:`txschannel.testing`.
"""

from txschannel.context import (
    Attributes,
    ClientContext,
    SecurityContext,
    ServerContext,
    Step,
    StreamSizes,
    Unwrapped,
)
from txschannel.credentials import Credentials
from txschannel.status import SecurityError, Status
from txschannel.validation import TrustStore, verify_server_chain

__all__ = [
    "Attributes",
    "ClientContext",
    "Credentials",
    "SecurityContext",
    "SecurityError",
    "ServerContext",
    "Status",
    "Step",
    "StreamSizes",
    "TrustStore",
    "Unwrapped",
    "verify_server_chain",
]

__version__ = "0.1.0"
