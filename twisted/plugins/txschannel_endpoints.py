"""Twisted plugin: the ``schannel:`` prefix for endpoint description strings.

Twisted scans ``twisted/plugins`` for objects providing its parser
interfaces; these two make ``serverFromString(reactor, "schannel:...")`` and
``clientFromString(reactor, "schannel:...")`` work in every Twisted program
once txschannel is installed. This folder has no ``__init__.py`` on purpose:
it is a portion of Twisted's own ``twisted.plugins`` package.
"""

from txschannel.endpoints import SchannelClientParser, SchannelServerParser

schannelServerParser = SchannelServerParser()
schannelClientParser = SchannelClientParser()
