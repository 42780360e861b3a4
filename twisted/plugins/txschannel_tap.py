"""Registers ``twist schannel`` (see :mod:`txschannel.terminator.tap`).

This folder must not have an ``__init__.py``: Twisted finds plugin modules
in every ``twisted/plugins`` folder on ``sys.path``.
"""

from twisted.application.service import ServiceMaker

schannel = ServiceMaker(
    "txschannel",
    "txschannel.terminator.tap",
    "A TLS terminator and tunnel (stunnel-like), with a built-in TLS inspector",
    "schannel",
)
