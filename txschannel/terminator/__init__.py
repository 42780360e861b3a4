"""``twist schannel``, the TLS terminator: an application built on the library.

One module per concept: the command line and service
(:mod:`~txschannel.terminator.tap`), the relay
(:mod:`~txschannel.terminator.relay`), the inspector
(:mod:`~txschannel.terminator.inspector`) and the ClientHello it describes
(:mod:`~txschannel.terminator.clienthello`), ``python -m txschannel probe``
(:mod:`~txschannel.terminator.probe`), and what the terminator grows
(:mod:`~txschannel.terminator.limits`, ...). Nothing in the library imports
this package.
"""
