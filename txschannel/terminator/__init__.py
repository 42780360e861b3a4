"""The parts of ``twist schannel`` (the TLS terminator) that are concepts of their own.

``twist schannel`` is an application built on the library: its command line
and service are in :mod:`txschannel.tap` and its relay in
:mod:`txschannel.relay`; what it grows lives here, one module per concept
(:mod:`~txschannel.terminator.limits`, ...). Nothing in the library imports
this package.
"""
