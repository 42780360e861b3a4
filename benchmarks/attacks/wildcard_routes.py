"""Attack on ``--route *.NAME=...``: a wildcard route matches exactly one
DNS label in front of NAME, and a malformed server name routes nowhere.

``twist schannel`` serves a certificate for ``*.example.com`` with the
routes ``*.example.com`` and ``example.com``. ``openssl s_client`` sends
server names that are no host name one label under ``example.com`` (an
empty label, the literal wildcard, a label over 63 bytes, trailing or
doubled dots). The figure is how many of them were routed instead of
refused with ``unrecognized_name``. About 10 s::

    python benchmarks/attacks/wildcard_routes.py
"""

from __future__ import annotations

import subprocess

from _peers import Certificates, Twist, free_port

BAD_NAMES = [".example.com", "*.example.com", "a" * 243 + ".example.com",
             "example.com..", "a..example.com", "a.b.example.com"]


def main() -> None:
    certificates = Certificates("localhost", "*.example.com")
    port = free_port()
    # Port 9 (discard) is never reached: the attack is decided by the route.
    with Twist("--listen", certificates.listen(port),
               "--route", "*.example.com=tcp:127.0.0.1:9",
               "--route", "example.com=tcp:127.0.0.1:9") as twist:
        twist.wait_for("listening on")
        routed = []
        for name in BAD_NAMES:
            run = subprocess.run(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name],
                input=b"", capture_output=True, timeout=30)
            refused = b"unrecognized name" in run.stdout + run.stderr
            shown = name if len(name) < 30 else name[:12] + "..." + name[-12:]
            print(f"  {shown:30} {'refused' if refused else 'ROUTED'}")
            if not refused:
                routed.append(shown)
    print(f"RESULT wildcard routes: {len(routed)} of {len(BAD_NAMES)} bad server names routed "
          f"{routed or ''}".rstrip())


if __name__ == "__main__":
    main()
