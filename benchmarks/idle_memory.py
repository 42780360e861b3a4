"""Idle memory per relayed connection: what a terminator keeps per idle client.

Not a test: it measures and prints, nothing asserts, and CI does not run it.
floor.py calls :func:`idle_kb` for its "KB/idle conn" column, compare.py for
its ``floor-idle-kb`` row; run on its own it measures one ``twist schannel``
(TLS) in front of floor.py's backend::

    python benchmarks/idle_memory.py                    # 2,000 connections
    python benchmarks/idle_memory.py --connections 5000
    python benchmarks/idle_memory.py --burst 262144 --quiet 12   # idle after a download

A client in a process of its own (this file with ``client``, on asyncio)
opens ``--base`` (100) connections through the terminator, a bounded number
(64) connecting or handshaking at a time, and holds them: handshake done,
nothing sent either way. Once the terminator has one more file descriptor
per connection than it had (its backend side: the relay is established) and
its CPU time has stopped moving, its resident set size (VmRSS in
``/proc/PID/status``, summed over its process group, so that workers
count) is read. The client then opens ``--connections`` more
and the same wait and read follow. Per connection = (second - first) /
connections, in KB (10^3 bytes); the kernel's socket buffers are not in
VmRSS.

Each connection takes a file descriptor in the client, two in the
terminator and one in the backend: the soft RLIMIT_NOFILE is raised to the
hard limit here before anything starts (children inherit it), and a count
that does not fit is refused with a message saying so.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Handshakes in flight at once, in the client.
CONCURRENCY = 64
#: Descriptors a process needs besides the connections.
FD_MARGIN = 200


def raise_fd_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit; refuse if *needed* won't fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and needed + FD_MARGIN > soft:
        raise SystemExit(
            f"--connections: {needed} file descriptors per process are needed but the hard "
            f"RLIMIT_NOFILE is {hard}; raise it (ulimit -Hn) or open fewer connections")


# -- the client (a process of its own) ----------------------------------------


async def _client(port: int, ca: str | None, stages: list[int], burst: int = 0) -> None:
    context: ssl.SSLContext | None = None
    if ca:
        context = ssl.create_default_context(cafile=ca)
    held: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(CONCURRENCY)

    async def open_one() -> None:
        async with gate:
            # open_connection returns once the TLS handshake is done.
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=context,
                                        server_hostname="localhost" if context else None),
                30)
            if burst:
                # A response of *burst* bytes through the terminator, then idle.
                writer.write(b"GET /hold/%d HTTP/1.1\r\nHost: x\r\n\r\n" % burst)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                assert head.startswith(b"HTTP/1.1 200"), head
                await asyncio.wait_for(reader.readexactly(burst), 60)
            held.append(writer)

    loop = asyncio.get_running_loop()
    previous = 0
    for stage in stages:
        await asyncio.gather(*(open_one() for _ in range(stage - previous)))
        previous = stage
        print(f"STAGE {len(held)}", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)


def client_main(arguments: argparse.Namespace) -> None:
    raise_fd_limit(max(arguments.stages))
    asyncio.run(_client(arguments.port, arguments.ca, arguments.stages, arguments.burst))


# -- the measurement ----------------------------------------------------------


def _group(group: int) -> list[int]:
    """The processes of process group *group* (a terminator and its workers)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            if int(stat.rpartition(")")[2].split()[2]) == group:
                members.append(int(entry))
    return members


def rss_kib(group: int) -> int:
    """The resident set size of process group *group*, summed, in KiB."""
    total = 0
    for pid in _group(group):
        try:
            with open(f"/proc/{pid}/status") as status:
                total += next(int(line.split()[1]) for line in status
                              if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue  # gone, or a zombie
    return total


def _fds(group: int) -> int:
    total = 0
    for pid in _group(group):
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return total


def _cpu_ticks(group: int) -> int:
    total = 0
    for pid in _group(group):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def _settle(group: int, fds: int, timeout: float = 60.0) -> None:
    """Wait (at most *timeout* s) until *group* holds *fds* descriptors and is idle."""
    deadline = time.monotonic() + timeout
    while _fds(group) < fds and time.monotonic() < deadline:
        time.sleep(0.1)
    ticks = _cpu_ticks(group)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _cpu_ticks(group)
        if now == ticks:
            return
        ticks = now


def _read_stage(client: subprocess.Popen[str], timeout: float) -> int:
    line: list[str] = []
    assert client.stdout is not None
    reader = threading.Thread(target=lambda: line.append(client.stdout.readline()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    reader.join(timeout)
    if not line or not line[0].startswith("STAGE "):
        raise RuntimeError(f"idle client: no STAGE line within {timeout:.0f} s "
                           f"(got {line[0].strip() if line else 'nothing'!r})")
    return int(line[0].split()[1])


def idle_kb(pid: int, port: int, ca: Path | None, count: int = 2000, base: int = 100,
            burst: int = 0, quiet: float = 0.0) -> float:
    """KB (10^3 bytes) of VmRSS per idle connection through *port*: the
    VmRSS of every process in *pid*'s process group (hitch's and ``twist
    --workers``' workers included).

    *ca* given: TLS connections verified with it (server name
    ``localhost``); None: plain TCP. *burst*: each connection first
    downloads that many bytes through the terminator (the backend keeps it
    open after). *quiet*: seconds more to wait, once the terminator is idle,
    before each reading. Raises RuntimeError if the client fails or takes
    too long.
    """
    raise_fd_limit(2 * (base + count))
    pid = os.getpgid(pid)
    start_fds = _fds(pid)
    argv = [sys.executable, str(Path(__file__).resolve()), "client", "--port", str(port),
            "--stages", f"{base},{base + count}", "--burst", str(burst),
            *(["--ca", str(ca)] if ca else [])]
    client = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        opened = _read_stage(client, 60)
        _settle(pid, start_fds + 2 * opened)
        time.sleep(quiet)
        before = rss_kib(pid)
        assert client.stdin is not None
        client.stdin.write("go\n")
        client.stdin.flush()
        opened = _read_stage(client, 60 + count / 20 + count * burst / 50e6)
        _settle(pid, start_fds + 2 * opened)
        time.sleep(quiet)
        after = rss_kib(pid)
        if opened != base + count:
            raise RuntimeError(f"idle client opened {opened} connections, not {base + count}")
    finally:
        client.kill()
        client.wait(10)
    return (after - before) * 1024 / 1000 / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--base", type=int, default=100)
    parser.add_argument("--runs", type=int, default=1, help="fresh servers, one after another")
    parser.add_argument("--plain", action="store_true",
                        help="twist schannel on a plain tcp: listener instead")
    parser.add_argument("--burst", type=int, default=0, metavar="BYTES",
                        help="each connection first downloads BYTES, then idles")
    parser.add_argument("--quiet", type=float, default=0.0, metavar="SECONDS",
                        help="wait this long more before each reading (quiet "
                             "connections give back their buffers after 5 to 10 s)")
    arguments = parser.parse_args()
    raise_fd_limit(2 * (arguments.base + arguments.connections))
    sys.path.insert(0, str(HERE))
    import floor
    import relay

    folder, backend, backend_port = relay.start_backend("txschannel-bench-idle-", 1 << 20)
    try:
        figures = []
        for _ in range(arguments.runs):
            port = relay.free_port()
            if arguments.plain:
                terminator = relay.Terminator(
                    "twist schannel (plain)",
                    [sys.executable, "-m", "twisted", "--log-format=text",
                     f"--log-file={folder / f'plain-{port}.log'}", "schannel",
                     "--listen", f"tcp:{port}:interface=127.0.0.1",
                     "--connect", f"tcp:127.0.0.1:{backend_port}"],
                    port, folder / f"plain-{port}.out")
            else:
                terminator = floor.twist_tls_terminator(folder, port, backend_port)
            terminator.start()
            try:
                assert terminator.process is not None
                figure = idle_kb(terminator.process.pid, port,
                                 None if arguments.plain else folder / "ca.pem",
                                 arguments.connections, arguments.base,
                                 arguments.burst, arguments.quiet)
            finally:
                terminator.stop()
            figures.append(figure)
            after = f", after {arguments.burst:,} bytes each" if arguments.burst else ""
            print(f"{terminator.name}: {figure:.1f} KB per idle connection "
                  f"({arguments.connections}{after}, {arguments.quiet:g} s quiet)",
                  flush=True)
        figures.sort()
        print(f"median of {len(figures)}: {figures[len(figures) // 2]:.1f} KB")
    finally:
        backend.kill()
        backend.wait(timeout=10)


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        client_parser = argparse.ArgumentParser()
        client_parser.add_argument("--port", type=int, required=True)
        client_parser.add_argument("--ca")
        client_parser.add_argument("--stages", type=lambda s: [int(x) for x in s.split(",")],
                                   required=True)
        client_parser.add_argument("--burst", type=int, default=0)
        client_main(client_parser.parse_args(sys.argv[2:]))
    else:
        main()
