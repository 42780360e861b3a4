"""Make limbo.json.gz here from a full x509-limbo corpus.

    python tests/data/x509-limbo/trim.py /path/to/limbo.json.gz

Keeps the SERVER and CLIENT test cases with only the fields the tests read
(certificates, the key of the peer's certificate, names, times, the
expected result); drops descriptions, CRLs and the empty algorithm lists.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

KEPT = (
    "id",
    "features",
    "conflicts_with",
    "validation_kind",
    "trusted_certs",
    "untrusted_intermediates",
    "peer_certificate",
    "peer_certificate_key",
    "validation_time",
    "expected_peer_name",
    "max_chain_depth",
    "extended_key_usage",
    "expected_result",
)


def main(source: str) -> None:
    with gzip.open(source, "rt", encoding="utf-8") as handle:
        corpus = json.load(handle)
    cases = [
        {field: case[field] for field in KEPT}
        for case in corpus["testcases"]
        if case["validation_kind"] in ("SERVER", "CLIENT")
    ]
    target = Path(__file__).with_name("limbo.json.gz")
    text = json.dumps({"version": corpus["version"], "testcases": cases}, separators=(",", ":"))
    # mtime=0: the same input gives the same bytes.
    with open(target, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
        packed.write(text.encode("utf-8"))
    print(f"{target}: {len(cases)} cases, {target.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1])
