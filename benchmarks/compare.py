"""Two builds of txschannel side by side: is a change faster or slower?

Not a test: it measures and prints, nothing asserts, and CI does not run it.

Run from the repository root::

    python benchmarks/compare.py --base 22c2e9d                      # default rows
    python benchmarks/compare.py --base main --runs 7 endpoint-bulk transport-bulk
    python benchmarks/compare.py --base 22c2e9d --head 20d1da9 endpoint-bulk
    python benchmarks/compare.py --list                              # the rows

The base (``--base REV``) is checked out with ``git worktree add --detach``
in a temporary folder; so is the head when ``--head REV`` is given,
otherwise the head is this working tree, uncommitted changes included. The
worktrees are removed at the end.

Both builds run on this interpreter, each with its checkout first on the
path (``TXSCHANNEL_TREE`` and ``PYTHONPATH``, which every child process and
every ``twist`` inherits), rather than each in a venv of its own with the
build pip-installed. txschannel is pure Python and both builds need the
same dependencies, so an installed copy would run the same bytecode from
another folder, and a venv per build would add minutes of installing to
every step of a bisect and a second copy of every dependency that could
drift from the first. What matters is that each side imports its own
txschannel: each measurement runs in a process of its own, which prints
``txschannel.__file__``, and a measurement that imported the package from
anywhere but its side's checkout is an error.

The harness is always this checkout's ``benchmarks/`` (transport.py,
floor.py, relay.py): only the library changes between the two sides. The
rows are named measurements:

- ``endpoint-bulk``: txschannel client and server built from ``schannel:``
  endpoint strings; the client writes 64 KiB blocks while it is not paused,
  and its wall clock from ``connect()`` to the server's answer after the
  last byte gives MB/s (transport.py's ``endpoint strings`` row);
- ``endpoint-bulk-cpu``: the same transfer's client plus server CPU time
  per GB (``/proc`` and ``getrusage``): it does not count the time either
  side waited for a CPU, so other load moves it less than MB/s;
  ``endpoint-client-cpu`` and ``endpoint-server-cpu`` are its two parts;
  ``endpoint-pauses`` and ``endpoint-reads`` count, per MB, how often flow
  control paused the client and in how many pieces the server's
  application received the data: counts of what the transports did, which
  load moves little, for finding what changed in how they move data;
- ``endpoint-bulk-ssl``: the same with Twisted's ``ssl:``/``tls:``
  endpoints. It does not depend on txschannel: a control that shows how
  much the machine's load moved between runs;
- ``endpoint-small``: the same shape with 100-byte writes, ``--small-megabytes``
  MB (300 by default) in all: transport.py's ``until paused 100B`` row,
  client clock. ``endpoint-small-cpu`` is its client plus server CPU per
  GB (``endpoint-small-client-cpu`` and ``endpoint-small-server-cpu`` its
  parts), ``endpoint-small-pauses`` and ``endpoint-small-reads`` its counts per
  MB, as for the 64 KiB rows; ``endpoint-small-ssl`` is its control on
  Twisted's ``ssl:``/``tls:``, whose own counts are
  ``endpoint-small-ssl-pauses`` and ``endpoint-small-ssl-reads`` (the
  harness's side of the shape, which neither build changes);
- ``transport-bulk`` / ``transport-small``: ``SchannelFactory`` on both
  sides, 64 KiB / 100 B writes for a few seconds, server-timed MB/s
  (transport.py's ``bulk`` rows);
- ``handshake-cpu``: server CPU microseconds per full TLS 1.3 handshake
  from ``openssl s_time -new`` (transport.py);
- ``floor-tls-cpu`` / ``floor-tls-mbs``: ``twist schannel`` with TLS in
  front of floor.py's backend: server CPU ms per connection (``s_time
  -new`` with one small request each) and MB/s of one ``curl`` download;
- ``floor-idle-kb``: the same ``twist schannel`` (a fresh one): KB of its
  VmRSS per idle relayed TLS connection, over 2,000 connections
  (idle_memory.py, floor.py's "KB/idle conn").

Each run measures every row once for both sides, the sides taking turns
(base first in even runs, head first in odd ones), so that a slow spell on
a shared machine lands on both; a side's rows run in one child process, one
after another. Printed per row: the median of each side, head / base, the
median of the runs' own head / base ratios (each pair measured back to
back, so it follows a load that drifts), in how many runs head was better,
the same median over the quiet runs only (those in which other processes
kept at most ``--quiet`` CPUs busy, from ``/proc/stat`` less this
comparison's own processes), and each side's spread (min-max). On a
machine that others share, trust the quiet column, and the counts. Whether higher is better is
shown per row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass(frozen=True)
class Measurement:
    """A named row: what it measures, its unit, and whether higher is better."""

    unit: str
    higher_is_better: bool
    help: str


ROWS: dict[str, Measurement] = {
    "endpoint-bulk": Measurement("MB/s", True, "schannel: endpoint strings, 64 KiB writes, "
                                 "client clock"),
    "endpoint-bulk-cpu": Measurement("ms/GB", False, "the same transfer: client plus "
                                     "server CPU per GB (less sensitive to other load)"),
    "endpoint-client-cpu": Measurement("ms/GB", False, "the same transfer: the client's "
                                       "CPU per GB"),
    "endpoint-server-cpu": Measurement("ms/GB", False, "the same transfer: the server's "
                                       "CPU per GB"),
    "endpoint-pauses": Measurement("per MB", False, "the same transfer: times the client "
                                   "was paused (flow control)"),
    "endpoint-reads": Measurement("per MB", False, "the same transfer: dataReceived calls "
                                  "in the server's application"),
    "endpoint-bulk-ssl": Measurement("MB/s", True, "the same on Twisted's ssl:/tls: "
                                     "(a control: txschannel is not used)"),
    "endpoint-small": Measurement("MB/s", True, "schannel: endpoint strings, 100 B writes "
                                  "until paused, client clock"),
    "endpoint-small-cpu": Measurement("ms/GB", False, "the same transfer: client plus "
                                      "server CPU per GB"),
    "endpoint-small-client-cpu": Measurement("ms/GB", False, "the same transfer: the "
                                             "client's CPU per GB"),
    "endpoint-small-server-cpu": Measurement("ms/GB", False, "the same transfer: the "
                                             "server's CPU per GB"),
    "endpoint-small-pauses": Measurement("per MB", False, "the same transfer: times the "
                                         "client was paused (flow control)"),
    "endpoint-small-reads": Measurement("per MB", False, "the same transfer: dataReceived "
                                        "calls in the server's application"),
    "endpoint-small-ssl": Measurement("MB/s", True, "the same on Twisted's ssl:/tls: "
                                      "(a control: txschannel is not used)"),
    "endpoint-small-ssl-pauses": Measurement("per MB", False, "the control's pauses "
                                             "(a count; txschannel is not used)"),
    "endpoint-small-ssl-reads": Measurement("per MB", False, "the control's dataReceived "
                                            "calls (a count; txschannel is not used)"),
    "transport-bulk": Measurement("MB/s", True, "SchannelFactory, 64 KiB writes, server clock"),
    "transport-small": Measurement("MB/s", True, "SchannelFactory, 100 B writes, server clock"),
    "handshake-cpu": Measurement("us/hs", False, "server CPU per full TLS 1.3 handshake"),
    "floor-tls-cpu": Measurement("ms/conn", False, "twist schannel (TLS): server CPU per "
                                 "connection"),
    "floor-tls-mbs": Measurement("MB/s", True, "twist schannel (TLS): one curl download"),
    "floor-idle-kb": Measurement("KB/conn", False, "twist schannel (TLS): VmRSS per idle "
                                 "relayed connection"),
}
#: Connections for floor-idle-kb.
IDLE_CONNECTIONS = 2000
DEFAULT_ROWS = ("endpoint-bulk", "endpoint-bulk-ssl", "transport-bulk", "handshake-cpu")


# ---------------------------------------------------------------------------
# One measurement, in a child process whose txschannel is TXSCHANNEL_TREE's
# ---------------------------------------------------------------------------


def measure(rows: list[str], megabytes: int, seconds: float, size_mib: int,
            small_megabytes: int = 300) -> dict[str, float]:
    """Take the measurements *rows* once, with the txschannel on the path.

    Rows that come from the same transfer (endpoint-bulk and
    endpoint-bulk-cpu; endpoint-small and its counts) share one.
    """
    # Imported here: transport.py and relay.py put TXSCHANNEL_TREE first on
    # sys.path as they load, before anything imports txschannel.
    sys.path.insert(0, str(HERE))
    import transport

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="txschannel-compare-") as folder:
        files = transport.make_certificates(folder, "ecdsa")
        if any(row.startswith("endpoint-") and not row.startswith("endpoint-small")
               and row != "endpoint-bulk-ssl" for row in rows):
            figures = transport.until_paused("schannel", files, 65536, megabytes * 10**6)
            results["endpoint-bulk"] = figures[0]
            results["endpoint-bulk-cpu"] = cpu_per_gigabyte(figures[1] + figures[3], megabytes)
            results["endpoint-client-cpu"] = cpu_per_gigabyte(figures[1], megabytes)
            results["endpoint-server-cpu"] = cpu_per_gigabyte(figures[3], megabytes)
            results["endpoint-pauses"] = figures[4] / megabytes
            results["endpoint-reads"] = figures[5] / megabytes
        if "endpoint-bulk-ssl" in rows:
            results["endpoint-bulk-ssl"] = transport.until_paused(
                "twisted", files, 65536, megabytes * 10**6)[0]
        if any(row.startswith("endpoint-small") and "-ssl" not in row for row in rows):
            figures = transport.until_paused("schannel", files, 100, small_megabytes * 10**6)
            results["endpoint-small"] = figures[0]
            results["endpoint-small-cpu"] = cpu_per_gigabyte(figures[1] + figures[3],
                                                             small_megabytes)
            results["endpoint-small-client-cpu"] = cpu_per_gigabyte(figures[1], small_megabytes)
            results["endpoint-small-server-cpu"] = cpu_per_gigabyte(figures[3], small_megabytes)
            results["endpoint-small-pauses"] = figures[4] / small_megabytes
            results["endpoint-small-reads"] = figures[5] / small_megabytes
        if any(row.startswith("endpoint-small-ssl") for row in rows):
            figures = transport.until_paused("twisted", files, 100, small_megabytes * 10**6)
            results["endpoint-small-ssl"] = figures[0]
            results["endpoint-small-ssl-pauses"] = figures[4] / small_megabytes
            results["endpoint-small-ssl-reads"] = figures[5] / small_megabytes
        if "transport-bulk" in rows:
            results["transport-bulk"] = transport.bulk("schannel", files, 65536, 4 << 30,
                                                       seconds)
        if "transport-small" in rows:
            results["transport-small"] = transport.bulk("schannel", files, 100, 1 << 30,
                                                        seconds)
        if "handshake-cpu" in rows:
            results["handshake-cpu"] = transport.handshakes(
                ["schannel"], files, "-new", "-tls1_3", max(1, round(seconds)))["schannel"][0]
    for row in ("floor-tls-cpu", "floor-tls-mbs", "floor-idle-kb"):
        if row in rows:
            results[row] = measure_floor(row, seconds, size_mib)
    return {row: value for row, value in results.items() if row in rows}


def cpu_per_gigabyte(seconds: float, megabytes: int) -> float:
    """CPU milliseconds per 10**9 bytes, from CPU *seconds* for *megabytes*."""
    return seconds * 1000 / (megabytes / 1000)


def measure_floor(row: str, seconds: float, size_mib: int) -> float:
    """floor.py's ``twist schannel (TLS)`` row: CPU ms per connection, MB/s
    or KB per idle connection."""
    import shutil

    import floor
    import idle_memory
    import relay

    size = size_mib * 1024 * 1024
    if row == "floor-idle-kb":
        # Before the server starts: it inherits the limit.
        idle_memory.raise_fd_limit(2 * (IDLE_CONNECTIONS + 100))
    folder, backend, backend_port = relay.start_backend("txschannel-compare-floor-", size)
    try:
        port = relay.free_port()
        terminator = floor.twist_tls_terminator(folder, port, backend_port)
        terminator.start()
        try:
            assert terminator.process is not None
            if row == "floor-tls-cpu":
                before = relay.group_cpu_seconds(terminator.process.pid)
                count = floor.tls_connections(port, folder / "ca.pem", max(1, round(seconds)))
                spent = relay.group_cpu_seconds(terminator.process.pid) - before
                return spent * 1000 / count
            if row == "floor-idle-kb":
                return idle_memory.idle_kb(terminator.process.pid, port, folder / "ca.pem",
                                           IDLE_CONNECTIONS)
            return relay.throughput(port, folder / "ca.pem", size)
        finally:
            terminator.stop()
    finally:
        backend.kill()
        backend.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def child_main(arguments: argparse.Namespace) -> None:
    import txschannel

    values = measure(arguments.measure.split(","), arguments.megabytes, arguments.seconds,
                     arguments.size_mib, arguments.small_megabytes)
    # On a line of its own: the measurements print progress without a newline.
    print("\n" + json.dumps({"file": txschannel.__file__, "values": values}), flush=True)


# ---------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------


def git(*arguments: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *arguments], check=True,
                          capture_output=True, text=True).stdout.strip()


class Side:
    """One build: a checkout, its label and the figures measured with it."""

    def __init__(self, label: str, tree: Path, description: str) -> None:
        self.label = label
        self.tree = tree.resolve()
        self.description = description
        self.values: dict[str, list[float]] = {}
        #: Per run, the rows' figures: the runs' pairs line up by index.
        self.by_run: list[dict[str, float]] = []
        #: Per run, the CPUs that other processes kept busy meanwhile.
        self.others: list[float] = []
        self.file: str | None = None

    def run(self, rows: list[str], arguments: argparse.Namespace) -> dict[str, float]:
        """Measure *rows* once in a child process that imports this side's txschannel."""
        environment = {**os.environ, "TXSCHANNEL_TREE": str(self.tree),
                       "PYTHONPATH": str(self.tree)}
        command = [sys.executable, str(Path(__file__).resolve()), "--measure", ",".join(rows),
                   "--megabytes", str(arguments.megabytes), "--seconds", str(arguments.seconds),
                   "--size-mib", str(arguments.size_mib),
                   "--small-megabytes", str(arguments.small_megabytes)]
        machine_before, ours_before, started = busy_seconds(), children_seconds(), time.monotonic()
        # Not inside either checkout, so that neither is on the path as the
        # current folder.
        result = subprocess.run(command, env=environment, cwd=tempfile.gettempdir(),
                                capture_output=True, text=True, timeout=900)
        # What the rest of the machine used meanwhile, in CPUs: all busy
        # time (steal included) less what this measurement's processes used.
        others = ((busy_seconds() - machine_before) - (children_seconds() - ours_before)) / max(
            time.monotonic() - started, 1e-3)
        self.others.append(max(others, 0.0))
        lines = [line for line in result.stdout.splitlines() if line.startswith("{\"file\"")]
        if result.returncode != 0 or not lines:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            print(f"  {self.label} {','.join(rows)}: failed: {' / '.join(tail)}",
                  file=sys.stderr)
            return {}
        report = json.loads(lines[-1])
        imported = Path(report["file"]).resolve()
        if self.tree not in imported.parents:
            raise SystemExit(f"{self.label} imported txschannel from {imported}, "
                             f"not from its checkout {self.tree}")
        if self.file is None:
            self.file = str(imported)
            print(f"{self.label}: {self.description}: txschannel from {self.file}",
                  file=sys.stderr)
        values = {row: float(value) for row, value in report["values"].items()}
        for row, value in values.items():
            self.values.setdefault(row, []).append(value)
        return values


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (Linux /proc/stat):
    everything but idle and iowait, steal (time the host gave elsewhere) included."""
    with open("/proc/stat") as stat:
        fields = [int(field) for field in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already counted in user time.
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_seconds() -> float:
    """User plus system CPU seconds of this process's waited-for descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def checkout(revision: str, folder: Path, name: str) -> tuple[Path, str]:
    commit = git("rev-parse", "--verify", f"{revision}^{{commit}}")
    tree = folder / name
    git("worktree", "add", "--detach", str(tree), commit)
    return tree, f"{revision} = {git('log', '-1', '--format=%h %s', commit)[:90]}"


def working_tree() -> str:
    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--",
                                                 "txschannel", "twisted") else ""
    return f"working tree at {git('log', '-1', '--format=%h %s')[:80]}{dirty}"


def spread(values: list[float]) -> str:
    return f"{_cell(min(values))}-{_cell(max(values))}" if values else "-"


def report(rows: list[str], base: Side, head: Side, runs: int, quiet: float) -> None:
    print(f"\nbase: {base.description}\nhead: {head.description}")
    print(f"{runs} run(s) per side, alternating; medians, head/base, and each side's "
          f"min-max; load average now {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    print("paired: the median of each run's head/base (the two measured one right after "
          "the other), and in how many runs head was better;")
    print(f"quiet: the paired median over the runs in which other processes kept at most "
          f"{quiet} CPUs busy\n  during both sides' measurements, and how many such runs "
          f"(--quiet); others' CPUs per run:")
    print("  base " + " ".join(f"{value:.2f}" for value in base.others))
    print("  head " + " ".join(f"{value:.2f}" for value in head.others))
    print(f"{'row':<26}{'unit':>8}{'base':>10}{'head':>10}{'head/base':>11}{'paired':>8}"
          f"{'better':>8}{'head won':>10}{'quiet':>10}{'base min-max':>20}{'head min-max':>20}")
    for row in rows:
        measurement = ROWS[row]
        ours, theirs = head.values.get(row, []), base.values.get(row, [])
        base_median = statistics.median(theirs) if theirs else None
        head_median = statistics.median(ours) if ours else None
        ratio = _ratio(head_median / base_median) if base_median and head_median else "-"
        pairs = [(h[row], b[row]) for h, b in zip(head.by_run, base.by_run, strict=True)
                 if row in h and row in b and b[row]]
        calm = [(h[row], b[row])
                for h, b, ho, bo in zip(head.by_run, base.by_run, head.others, base.others,
                                        strict=True)
                if row in h and row in b and b[row] and max(ho, bo) <= quiet]
        quiet_paired = (f"{_ratio(statistics.median(h / b for h, b in calm))}/{len(calm)}"
                        if calm else "-")
        paired = _ratio(statistics.median(h / b for h, b in pairs)) if pairs else "-"
        won = sum(1 for h, b in pairs if (h > b if measurement.higher_is_better else h < b))
        print(f"{row:<26}{measurement.unit:>8}"
              f"{_cell(base_median):>10}{_cell(head_median):>10}{ratio:>11}{paired:>8}"
              f"{'higher' if measurement.higher_is_better else 'lower':>8}"
              f"{f'{won}/{len(pairs)}':>10}{quiet_paired:>10}"
              f"{spread(theirs):>20}{spread(ours):>20}")


def _ratio(value: float) -> str:
    """A ratio in its column: three decimals, fewer when a count went from
    (almost) nothing to something and the ratio is large."""
    return f"{value:.3f}" if value < 100 else f"{value:.0f}"


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="*", metavar="ROW",
                        help=f"rows to measure (default: {' '.join(DEFAULT_ROWS)})")
    parser.add_argument("--base", help="the revision to compare against (git rev)")
    parser.add_argument("--head", help="the revision to compare (default: this working tree)")
    parser.add_argument("--runs", type=int, default=5, help="runs per side (default 5)")
    parser.add_argument("--megabytes", type=int, default=1000,
                        help="MB the endpoint-bulk rows write (default 1000)")
    parser.add_argument("--small-megabytes", type=int, default=300,
                        help="MB the endpoint-small rows write, 100 bytes at a time "
                        "(default 300, as transport.py's --paused-mb)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="length of the timed bulk, s_time and floor runs (default 3)")
    parser.add_argument("--size-mib", type=int, default=256,
                        help="floor-tls-mbs download size (default 256)")
    parser.add_argument("--nice", type=int, default=0,
                        help="niceness change for every process of the comparison, e.g. -5 "
                        "(needs root) to suffer less from other load")
    parser.add_argument("--quiet", type=float, default=0.5,
                        help="the 'quiet' column keeps the runs in which other processes "
                        "kept at most this many CPUs busy (default 0.5)")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.measure:
        child_main(arguments)
        return
    if arguments.list:
        for name, measurement in ROWS.items():
            print(f"{name:<26}{measurement.unit:>8}  {measurement.help}")
        return
    if not arguments.base:
        parser.error("--base REV is needed")
    rows = arguments.rows or list(DEFAULT_ROWS)
    unknown = [row for row in rows if row not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; --list shows them")
    if arguments.runs < 1:
        parser.error("--runs must be at least 1")
    if arguments.nice:
        os.nice(arguments.nice)  # inherited by every child, server and client

    with tempfile.TemporaryDirectory(prefix="txschannel-compare-") as temporary:
        folder = Path(temporary)
        trees: list[Path] = []
        try:
            tree, description = checkout(arguments.base, folder, "base")
            trees.append(tree)
            base = Side("base", tree, description)
            if arguments.head:
                tree, description = checkout(arguments.head, folder, "head")
                trees.append(tree)
                head = Side("head", tree, description)
            else:
                head = Side("head", REPO, working_tree())
            for number in range(arguments.runs):
                order = (base, head) if number % 2 == 0 else (head, base)
                measured = {side.label: side.run(rows, arguments) for side in order}
                for side in (base, head):
                    side.by_run.append(measured[side.label])
                for row in rows:
                    figures = ", ".join(f"{side.label} {_cell(measured[side.label].get(row))}"
                                        for side in order)
                    print(f"run {number + 1}/{arguments.runs} {row}: {figures}",
                          file=sys.stderr)
                print(f"run {number + 1}/{arguments.runs} others' CPUs: "
                      + ", ".join(f"{side.label} {side.others[-1]:.2f}" for side in order),
                      file=sys.stderr)
        finally:
            for tree in trees:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                                str(tree)], capture_output=True)
    report(rows, base, head, arguments.runs, arguments.quiet)


if __name__ == "__main__":
    main()
