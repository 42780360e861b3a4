"""Attack on ``ocsp=auto``: a responder that dribbles its answer holds at
most one socket of the server, for at most the fetch deadline.

A throw-away CA issues the server certificate with an OCSP URL on
loopback (hence ``ocspAllowPrivate=yes``). The responder there answers
every request with headers announcing 60,000 bytes, then one byte every
0.1 s for as long as the client stays. ``twist schannel`` fetches with a
15 s deadline and retries after 30 s, then 60 s. The responder's open
sockets are sampled every 5 s for ``--seconds``. The figure is the most
sockets open at once and the connections made::

    python benchmarks/attacks/ocsp_dribble.py [--seconds 130]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _peers import Twist, free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=130.0, help="how long to sample")
    args = parser.parse_args()
    # After _peers has put the checkout on the path: the tests' responder and PKI.
    from tests.support.ocsp import PKI, Responder

    responder = Responder()
    responder.dribble = True
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="txschannel-attack-"))
    certificate = PKI(folder, responder.port).server_file
    with Twist("--listen", f"schannel:tcp:{port}:interface=127.0.0.1:certificate={certificate}"
               ":ocsp=auto:ocspAllowPrivate=yes") as twist:
        twist.wait_for("listening on")
        start = time.monotonic()
        samples = []
        while time.monotonic() - start < args.seconds:
            # Two ints the responder's threads update: a sample needs no lock.
            samples.append((round(time.monotonic() - start), responder.connections,
                            responder.open))
            time.sleep(5)
        responder.stop()
        print("t(s) connections-made open-now")
        for sample in samples:
            print(*sample)
        for line in twist.output.splitlines():
            if "OCSP" in line:
                print(line[:240])
    # The longest run of samples with a socket open: how long one was held, to 5 s.
    longest = run = 0
    for _, _, open_now in samples:
        run = run + 1 if open_now else 0
        longest = max(longest, run)
    print(f"RESULT ocsp dribble over {args.seconds:g} s: at most {max(s[2] for s in samples)} "
          f"responder socket(s) open at once, none open in more than {longest} samples in a row "
          f"(5 s apart), {samples[-1][1]} connections made")


if __name__ == "__main__":
    main()
