"""Fuzzing: whatever bytes arrive, a context answers with a status or a
SecurityError, never another exception and never a hang.

A seeded random loop (reproducible: the seed is in the failure message)
feeds thousands of mutated real records and random ones into ``accept``,
``initialize`` and ``decrypt``. Each part stops after a fixed number of
cases or a few seconds, whichever comes first; an interval timer turns a
single call that hangs into a failure instead of a stuck suite.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from twisted.trial.unittest import SynchronousTestCase

from tests.support.contexts import NAME, client_credentials, server_credentials
from tests.support.handshake import Pair, handshake
from txschannel import ClientContext, SecurityError, ServerContext, Status, Step, Unwrapped
from txschannel.records import frame

#: Per-part budget; the cases count is the real bound on a normal machine.
BUDGET_SECONDS = 4.0
CALL_TIMEOUT = 5.0
SEED = int(os.environ.get("TXSCHANNEL_FUZZ_SEED", "20261124"))
SEEDS_FOLDER = os.path.join(os.path.dirname(__file__), "fuzz_seeds")


class Hang(Exception):
    pass


@contextmanager
def no_hang(what: str) -> Iterator[None]:
    """Fail (rather than hang) when one call takes longer than CALL_TIMEOUT."""

    def alarm(signum: int, frame: object) -> None:
        raise Hang(f"{what} took more than {CALL_TIMEOUT}s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, CALL_TIMEOUT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One random mutation of *data*, in the ways a network or attacker does."""
    buffer = bytearray(data)
    kind = rng.randrange(8)
    if kind == 0 and buffer:  # flip bits
        for _ in range(rng.randint(1, 4)):
            buffer[rng.randrange(len(buffer))] ^= 1 << rng.randrange(8)
    elif kind == 1 and buffer:  # overwrite a byte
        buffer[rng.randrange(len(buffer))] = rng.randrange(256)
    elif kind == 2:  # truncate
        del buffer[rng.randrange(len(buffer) + 1) :]
    elif kind == 3:  # insert random bytes
        at = rng.randrange(len(buffer) + 1)
        buffer[at:at] = rng.randbytes(rng.randint(1, 16))
    elif kind == 4 and len(buffer) > 5:  # change a record length
        buffer[3:5] = rng.randrange(1 << 16).to_bytes(2, "big")
    elif kind == 5 and buffer:  # delete a slice
        at = rng.randrange(len(buffer))
        del buffer[at : at + rng.randint(1, 32)]
    elif kind == 6:  # duplicate a slice
        at = rng.randrange(len(buffer) + 1)
        buffer[at:at] = buffer[at : at + rng.randint(1, 64)]
    else:  # a well-formed record header with random contents
        body = rng.randbytes(rng.randint(0, 400))
        header = bytes([rng.choice([20, 21, 22, 23]), 3, rng.choice([1, 3, 4])])
        buffer += header + len(body).to_bytes(2, "big") + body
    return bytes(buffer)


def random_record(rng: random.Random) -> bytes:
    body = rng.randbytes(rng.choice([0, 1, 2, 5, 40, 300, 2000]))
    header = bytes([rng.choice([20, 21, 22, 23, rng.randrange(256)]), 3, rng.randrange(5)])
    return header + len(body).to_bytes(2, "big") + body


def seed_corpus() -> list[bytes]:
    """Inputs that once mattered, kept in tests/fuzz_seeds/ (may be empty)."""
    if not os.path.isdir(SEEDS_FOLDER):
        return []
    corpus = []
    for name in sorted(os.listdir(SEEDS_FOLDER)):
        with open(os.path.join(SEEDS_FOLDER, name), "rb") as handle:
            corpus.append(handle.read())
    return corpus


class FuzzTests(SynchronousTestCase):
    def run_cases(self, name: str, cases: int, case: Callable[[random.Random, int], None]) -> int:
        rng = random.Random(f"{SEED}-{name}")
        deadline = time.monotonic() + BUDGET_SECONDS
        done = 0
        for i in range(cases):
            if time.monotonic() > deadline:
                break
            try:
                with no_hang(f"{name} case {i}"):
                    case(rng, i)
            except SecurityError as e:
                self.assertTrue(e.status.is_error, e)
                self.assertIsInstance(e.token, bytes)
                self.assertTrue(e.reason)
            except Exception as e:  # anything else is the bug this test hunts
                raise AssertionError(
                    f"{name} case {i} (TXSCHANNEL_FUZZ_SEED={SEED}) raised {e!r}") from e
            done += 1
        # A sanity check that the loop ran, not a speed test: a slow machine
        # runs fewer cases within the budget.
        self.assertGreaterEqual(done, min(cases, 50), f"only {done} {name} cases ran")
        return done

    def check_step(self, step: Step, data: bytes) -> None:
        self.assertIn(step.status, (Status.OK, Status.CONTINUE_NEEDED,
                                    Status.INCOMPLETE_MESSAGE))
        self.assertTrue(data.endswith(step.extra))
        if step.status is Status.INCOMPLETE_MESSAGE:
            self.assertGreater(step.missing, 0)

    def test_accept_survives_mutated_client_hellos(self) -> None:
        credentials = server_credentials()
        hellos = [ClientContext(client_credentials(maximum_version=v), NAME).initialize().token
                  for v in ("TLSv1.2", "TLSv1.3")]
        corpus = seed_corpus()

        def case(rng: random.Random, i: int) -> None:
            if i < len(corpus):
                data = corpus[i]
            elif i % 10 == 0:
                data = rng.randbytes(rng.randint(0, 600))
            elif i % 10 == 1:
                data = b"".join(random_record(rng) for _ in range(rng.randint(1, 3)))
            else:
                data = rng.choice(hellos)
                for _ in range(rng.randint(1, 3)):
                    data = mutate(rng, data)
            server = ServerContext(credentials)
            step = server.accept(data)
            self.check_step(step, data)
            if step.status is Status.INCOMPLETE_MESSAGE:
                more = step.extra + rng.randbytes(rng.randint(1, 300))
                self.check_step(server.accept(more), more)

        self.run_cases("accept", 3000, case)

    def test_initialize_survives_mutated_server_flights(self) -> None:
        client_side, server_side = client_credentials(), server_credentials()
        flights = []
        for version in ("TLSv1.2", "TLSv1.3"):
            client = ClientContext(client_credentials(maximum_version=version), NAME)
            flights.append(ServerContext(server_side).accept(client.initialize().token).token)

        def case(rng: random.Random, i: int) -> None:
            client = ClientContext(client_side, NAME)
            client.initialize()
            if i % 8 == 0:
                data = rng.randbytes(rng.randint(0, 600))
            else:
                data = rng.choice(flights)
                for _ in range(rng.randint(1, 3)):
                    data = mutate(rng, data)
            self.check_step(client.initialize(data), data)

        self.run_cases("initialize", 3000, case)

    def test_decrypt_survives_mutated_records(self) -> None:
        pairs: list[Pair] = []
        # Credentials are built once, as in real use (and resumption makes
        # most handshakes cheap, which buys more cases).
        credentials = {v: (client_credentials(maximum_version=v), server_credentials())
                       for v in ("TLSv1.2", "TLSv1.3")}

        def fresh() -> Pair:
            client_side, server_side = credentials[("TLSv1.2", "TLSv1.3")[len(pairs) % 2]]
            pair = handshake(ClientContext(client_side, NAME), ServerContext(server_side))
            # Settle the tickets so that later records are pure traffic.
            pair.server_to_client(b"")
            pairs.append(pair)
            return pair

        state: dict[str, Pair] = {}

        def case(rng: random.Random, i: int) -> None:
            pair = state.get("pair") or fresh()
            state["pair"] = pair
            sender, receiver = ((pair.client.context, pair.server.context) if i % 2 == 0
                                else (pair.server.context, pair.client.context))
            records = sender.encrypt(rng.randbytes(rng.choice([1, 100, 5000, 20000])))
            if i % 7 == 0:
                data = b"".join(random_record(rng) for _ in range(rng.randint(1, 3)))
            else:
                data = mutate(rng, records)
            try:
                result = receiver.decrypt(data)
            except SecurityError:
                state.pop("pair")
                raise
            self.assertIsInstance(result, Unwrapped)
            self.assertTrue(data.endswith(result.extra))
            if result.status is Status.CONTEXT_EXPIRED or result.extra:
                # A half record or a close: this pair's streams are out of
                # step now; start again with a new one.
                state.pop("pair")

        self.run_cases("decrypt", 2000, case)

    def test_a_whole_random_conversation_between_contexts(self) -> None:
        """Random chunking of a real handshake with one mutated delivery."""

        client_side, server_side = client_credentials(), server_credentials()

        def case(rng: random.Random, i: int) -> None:
            client = ClientContext(client_side, NAME)
            server = ServerContext(server_side)
            deliveries = [0]
            target = rng.randint(0, 3)

            def split(data: bytes) -> Iterator[bytes]:
                if deliveries[0] == target:
                    data = mutate(rng, data)
                deliveries[0] += 1
                at = 0
                while at < len(data):
                    n = rng.randint(1, 400)
                    yield data[at : at + n]
                    at += n

            try:
                handshake(client, server, split)
            except AssertionError:
                pass  # a mutated flight may leave both sides waiting: not a bug

        self.run_cases("conversation", 400, case)

    def test_framing_never_raises_anything_but_security_error(self) -> None:
        def case(rng: random.Random, i: int) -> None:
            data = rng.randbytes(rng.randint(0, 64))
            framing = frame(data)
            self.assertLessEqual(framing.complete, len(data))

        self.run_cases("frame", 5000, case)
