"""Registry speed: appends per second, `wm audit verify` time, inclusion proof size and cost.

Run ``python -m benchmarks.registry [--pg URL] [--quick]``; writes
``benchmarks/results/registry.md``. Measures, on SQLite (a file in a temporary
directory) and PostgreSQL (a fresh schema, skipped when no server answers):

- appends per second with one writer, and with 8 writer processes at once;
- :meth:`Registry.verify_log` time on logs of 10,000 and 100,000 entries
  (built with :meth:`Registry.append_many`, whose rate is reported too);
- RFC 9162 inclusion proof size (hashes, bytes) and check time against tree size.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core import merkle
from registry import Registry, generate_owner_key, load_owner_key

PAYLOAD_TYPE = "application/vnd.wm.bench+json"
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ROOT = Path(__file__).resolve().parents[1]


def _worker(argv: list[str]) -> int:
    url, home, worker, count, go = argv
    key = load_owner_key(Path(home))
    with Registry.open(url, create=False) as reg:
        reg.size()  # connect before the start signal
        Path(f"{go}.ready-{worker}").touch()
        while not Path(go).exists():
            time.sleep(0.002)
        for i in range(int(count)):
            reg.append(key, PAYLOAD_TYPE, {"worker": int(worker), "i": i})
    return 0


@contextmanager
def _database(kind: str, pg_url: str, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp / f'bench-{uuid.uuid4().hex[:8]}.db'}"
        return
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(pg_url)
    info = f"host={u.host} port={u.port or 5432} dbname={u.database} user={u.username}"
    schema = f"wm_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(info, autocommit=True) as c:
        c.execute(f'CREATE SCHEMA "{schema}"')  # type: ignore[arg-type]
    try:
        yield f"{pg_url}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(info, autocommit=True) as c:
            c.execute(f'DROP SCHEMA "{schema}" CASCADE')  # type: ignore[arg-type]


def _pg_ok(pg_url: str) -> str | None:
    try:
        with _database("postgresql", pg_url, Path(tempfile.gettempdir())) as url:
            Registry.open(url).close()
    except Exception as exc:  # any failure means "skip PostgreSQL"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def single_writer(url: str, home: Path, n: int) -> float:
    key = load_owner_key(home, "bench")
    with Registry.open(url) as reg:
        reg.add_owner(key)
        t0 = time.perf_counter()
        for i in range(n):
            reg.append(key, PAYLOAD_TYPE, {"i": i})
        return n / (time.perf_counter() - t0)


def many_writers(url: str, home: Path, tmp: Path, procs: int, each: int) -> float:
    key = load_owner_key(home, "bench")
    with Registry.open(url) as reg:
        reg.add_owner(key)
    go = tmp / f"go-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "WM_PASSPHRASE": "bench"}
    ps = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.registry",
                "--worker",
                url,
                str(home),
                str(w),
                str(each),
                str(go),
            ],
            cwd=ROOT,
            env=env,
        )
        for w in range(procs)
    ]
    deadline = time.monotonic() + 120
    while not all(Path(f"{go}.ready-{w}").exists() for w in range(procs)):
        if time.monotonic() > deadline:
            raise RuntimeError("writer processes did not start")
        time.sleep(0.01)
    t0 = time.perf_counter()
    go.touch()
    for p in ps:
        if p.wait() != 0:
            raise RuntimeError("a writer process failed")
    rate = procs * each / (time.perf_counter() - t0)
    with Registry.open(url) as reg:
        assert reg.size() == 1 + procs * each
    return rate


def verify_time(url: str, home: Path, n: int) -> tuple[float, float]:
    key = load_owner_key(home, "bench")
    with Registry.open(url) as reg:
        reg.add_owner(key)
        t0 = time.perf_counter()
        batch = 5000
        for start in range(0, n - 1, batch):
            reg.append_many(key, PAYLOAD_TYPE, [{"i": i} for i in range(start, min(n - 1, start + batch))])
        build = (n - 1) / (time.perf_counter() - t0)
        reg.checkpoint(key)
        t0 = time.perf_counter()
        report = reg.verify_log()
        elapsed = time.perf_counter() - t0
        assert report.size == n
    return elapsed, build


def proof_costs(sizes: list[int]) -> list[tuple[int, int, int, float]]:
    out = []
    for n in sizes:
        hashes = [merkle.leaf_hash(i.to_bytes(8, "big")) for i in range(n)]
        root = merkle.root_from_hashes(hashes)
        index = n // 3
        proof = merkle.inclusion_proof(hashes, index)
        reps = 2000
        args = (hashes[index], index, n, proof, root)
        t = timeit.timeit(lambda args=args: merkle.verify_inclusion(*args), number=reps)
        out.append((n, len(proof), 32 * len(proof), t / reps * 1e6))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pg", default=PG_DEFAULT, help="PostgreSQL URL (a schema is created)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "registry.md"))
    args = parser.parse_args()
    if args.worker:
        return _worker(args.worker)

    single_n, procs, each = (300, 8, 50) if args.quick else (2000, 8, 250)
    verify_sizes = [1000, 5000] if args.quick else [10_000, 100_000]
    kinds = ["sqlite"]
    pg_reason = _pg_ok(args.pg)
    if pg_reason is None:
        kinds.append("postgresql")
    rows: list[str] = []
    verify_rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        home = tmp / "home"
        generate_owner_key(home, "bench", "bench")
        for kind in kinds:
            with _database(kind, args.pg, tmp) as url:
                one = single_writer(url, home, single_n)
            with _database(kind, args.pg, tmp) as url:
                eight = many_writers(url, home, tmp, procs, each)
            rows.append(f"| {kind} | {one:,.0f} | {eight:,.0f} |")
            print(rows[-1], flush=True)
            for n in verify_sizes:
                with _database(kind, args.pg, tmp) as url:
                    secs, build = verify_time(url, home, n)
                verify_rows.append(f"| {kind} | {n:,} | {secs:.2f} | {n / secs:,.0f} | {build:,.0f} |")
                print(verify_rows[-1], flush=True)
    proofs = proof_costs([2**10, 10**4, 2**17, 10**6] if not args.quick else [2**10, 10**4])
    load = os.getloadavg()[0]
    lines = [
        "# Registry benchmark",
        "",
        f"`python -m benchmarks.registry{' --quick' if args.quick else ''}` on "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {load:.1f} at the end (the machine is shared; numbers move with load).",
        "",
        "## Appends per second",
        "",
        f"One writer: {single_n} appends in one process. Eight writers: {procs} processes x "
        f"{each} appends at once, timed from the start signal to the last exit. Every append "
        "is one transaction: lock, sign (Ed25519 over the DSSE PAE), insert, update the tree head.",
        "",
        "| database | one writer | eight processes |",
        "| --- | ---: | ---: |",
        *rows,
        "",
    ]
    if pg_reason is not None:
        lines += [f"PostgreSQL skipped: {pg_reason}", ""]
    lines += [
        "## `wm audit verify` (Registry.verify_log)",
        "",
        "Recomputes every leaf hash, Ed25519 signature, signed index and previous root, the "
        "tree, the head and one checkpoint. Logs built with `append_many` (batches of 5,000).",
        "",
        "| database | entries | verify seconds | entries/s verified | entries/s appended in batches |",
        "| --- | ---: | ---: | ---: | ---: |",
        *verify_rows,
        "",
        "## Inclusion proofs (RFC 9162)",
        "",
        "| tree size | hashes | bytes | check time (us) |",
        "| ---: | ---: | ---: | ---: |",
        *[f"| {n:,} | {h} | {b} | {t:.1f} |" for n, h, b, t in proofs],
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
