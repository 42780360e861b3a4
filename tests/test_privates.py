"""No txschannel module reads another's private names (issue 21).

Modules meet at public seams: ``context`` offers what ``protocol`` needs,
``credentials`` what ``context``, routing and metrics need. A library's
private names (Twisted's, prometheus_client's) are read only in the few
places listed below, each for a reason its comment gives; pyOpenSSL's only
in ``txschannel/_openssl.py``, which the scan leaves out.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.support.privates import private_reads

#: Where txschannel may read a library's private names, and why: there is no
#: public way to learn or set the same.
_LIBRARY_PRIVATES = {
    # Twisted's optionsForClientTLS keeps the name it checks only there.
    ("txschannel/creators.py", "creator._hostnameASCII"),
    # The warning Twisted gives for getContext() factories, to silence it.
    ("txschannel/creators.py",
     "from twisted.protocols._tls_legacy import LegacyContextFactoryWarning"),
    # Whether prometheus_client writes per-process files (it was imported
    # after PROMETHEUS_MULTIPROC_DIR was set).
    ("txschannel/terminator/metrics.py", "values.ValueClass._multiprocess"),
    # --status on loopback unless an interface is given: Twisted's TCP
    # endpoints offer no public way to change their interface.
    ("txschannel/terminator/options.py", "inner._interface"),
    # Twisted's FileDescriptor counts part of its write buffer only there.
    ("txschannel/terminator/relay.py", "bottom._tempDataLen"),
    # Whether a TCP transport has anything queued, or has shut its writing
    # half, before a write is sent at once: FileDescriptor says so only there.
    ("txschannel/_sendnow.py", "transport._tempDataBuffer"),
    ("txschannel/_sendnow.py", "transport._writeDisconnected"),
    # Whether abortConnection() was called: tcp.Connection says so only there.
    ("txschannel/_sendnow.py", "transport._aborting"),
    # Whether any log observer would keep the completed handshake's debug
    # event (it is not built otherwise): Twisted's publisher and filter keep
    # their observers and predicates only there. Any shape not recognised
    # counts as observing, so a change in Twisted costs speed, not events.
    ("txschannel/protocol.py", "observer._observers"),
    ("txschannel/protocol.py", "observer._observer"),
    ("txschannel/protocol.py", "observer._shouldLogEvent"),
    ("txschannel/protocol.py", "observer._negativeObserver"),
    ("txschannel/protocol.py", "from twisted.logger._observer import bitbucketLogObserver"),
    # An enum member's name: ``_name_`` is a documented "_sunder_" attribute
    # of enum members, without the property lookup ``.name`` costs on 3.11.
    ("txschannel/protocol.py", "step.status._name_"),
    ("txschannel/protocol.py", "e.status._name_"),
}


class PrivateReadsTests(TestCase):
    """The package as it is, and the scan's own reach."""

    def test_no_module_reads_another_modules_private_names(self) -> None:
        reads = [str(read) for read in private_reads() if read.owner is not None]
        self.assertEqual(reads, [])

    def test_library_private_names_only_where_listed(self) -> None:
        found = {
            (read.where.rpartition(":")[0], read.text)
            for read in private_reads()
            if read.owner is None
        }
        self.assertEqual(found - _LIBRARY_PRIVATES, set())

    def test_scan_finds_each_kind_of_reach(self) -> None:
        """A module reaching into another by module, object, getattr and
        import is found; its own private names are not."""
        package = Path(self.mktemp()) / "txschannel"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "store.py").write_text(textwrap.dedent("""
            _cache = {}

            class Store:
                def __init__(self):
                    self._items = []

                def _forget(self):
                    pass
        """))
        (package / "user.py").write_text(textwrap.dedent("""
            from txschannel import store
            from txschannel.store import _cache

            class Own:
                def __init__(self):
                    self._mine = 1

            def use(thing, own):
                store._cache.clear()
                thing._items.append(1)
                getattr(thing, "_forget")()
                own._mine += 1
                return _cache
        """))
        reads = {(read.text, read.owner) for read in private_reads(package)}
        self.assertEqual(
            reads,
            {
                ("store._cache", "txschannel.store"),
                ("thing._items", "txschannel.store"),
                ("thing._forget", "txschannel.store"),
                ("from txschannel.store import _cache", "txschannel.store"),
            },
        )
