"""Registry speed: appends per second, `wm audit verify` time, proof time against tree size.

Run ``python -m benchmarks.registry [--pg URL] [--quick]``; writes
``benchmarks/results/registry.md``. Measures, side by side in one run, on SQLite
(a file in a temporary directory) and PostgreSQL (a fresh schema, skipped when
no server answers):

- appends per second (:meth:`Registry.append`) with one writer, and with 8
  writer processes at once (PostgreSQL batches them through
  :mod:`registry.sequencer`);
- :meth:`Registry.verify_log` time on logs of 10,000 and 100,000 entries
  (built with :meth:`Registry.append_many`, whose rate is reported too);
- :meth:`Registry.inclusion_proof` and :meth:`Registry.consistency_proof` time
  (served from the stored tree nodes) for trees of 10^3 to 10^6 entries, inside
  the largest log built (10^6 entries on SQLite).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
        # when its last append returned (CLOCK_MONOTONIC is one clock for every process)
        Path(f"{go}.done-{worker}").write_text(repr(time.monotonic()))
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
    t0 = time.monotonic()
    go.touch()
    for p in ps:
        if p.wait() != 0:
            raise RuntimeError("a writer process failed")
    last = max(float(Path(f"{go}.done-{w}").read_text()) for w in range(procs))
    rate = procs * each / (last - t0)
    with Registry.open(url) as reg:
        assert reg.size() == 1 + procs * each
    return rate


def verify_time(url: str, home: Path, n: int) -> tuple[float, float, float, float, float]:
    """Build a log of ``n`` entries, checkpoint it, and time the audit with 1, then 2 signature
    workers; (seconds with 1, seconds with 2, build rate, CPU seconds with 1, CPU seconds with 2:
    this process and its reaped children, not the database server)."""
    build = build_log(url, home, n)
    times: dict[int, tuple[float, float]] = {}
    with Registry.open(url) as reg:
        reg.checkpoint(load_owner_key(home, "bench"))
        for workers in (1, 2):
            c0 = _cpu()
            t0 = time.perf_counter()
            report = reg.verify_log(workers=workers)
            times[workers] = (time.perf_counter() - t0, _cpu() - c0)
            assert report.size == n
    return times[1][0], times[2][0], build, times[1][1], times[2][1]


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (the signature workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def build_log(url: str, home: Path, n: int) -> float:
    """Fill a fresh log to ``n`` entries with ``append_many``; its rate (entries/s)."""
    key = load_owner_key(home, "bench")
    with Registry.open(url) as reg:
        reg.add_owner(key)
        t0 = time.perf_counter()
        batch = 5000
        for start in range(0, n - 1, batch):
            reg.append_many(key, PAYLOAD_TYPE, [{"i": i} for i in range(start, min(n - 1, start + batch))])
        return (n - 1) / (time.perf_counter() - t0)


def audit_cpu(n: int) -> str:
    """CPU seconds of a one-process audit of ``n`` entries (SQLite: all the work is in this
    process), so a figure taken on a loaded machine says what one idle core would take."""
    with tempfile.TemporaryDirectory() as tmpdir:
        home = Path(tmpdir) / "home"
        generate_owner_key(home, "bench", "bench", kdf_rounds=1000)
        url = f"sqlite:///{Path(tmpdir) / 'cpu.db'}"
        build_log(url, home, n)
        with Registry.open(url) as reg:
            w0, c0 = time.perf_counter(), time.process_time()
            reg.verify_log()
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return (
        f"audit of {n:,} entries (SQLite, 1 process): {wall:.2f} s wall, {cpu:.2f} s CPU = "
        f"{cpu / n * 1e6:.0f} us per entry, {cpu / n * 1e5:.1f} s of CPU per 100,000 entries; "
        f"load average {os.getloadavg()[0]:.1f}"
    )


def proof_times(url: str, sizes: list[int], reps: int = 200) -> list[tuple[int, float, float, int]]:
    """Median-free mean time (ms) of an inclusion and a consistency proof in trees of each size."""
    out = []
    with Registry.open(url) as reg:
        for n in sizes:
            t0 = time.perf_counter()
            for r in range(reps):
                proof = reg.inclusion_proof((r * 7919) % n, n)
            incl = (time.perf_counter() - t0) / reps * 1e3
            t0 = time.perf_counter()
            for r in range(reps):
                reg.consistency_proof(1 + (r * 7919) % (n - 1), n)
            cons = (time.perf_counter() - t0) / reps * 1e3
            proof.verify()
            out.append((n, incl, cons, len(proof.hashes)))
    return out


def proofs_only(n: int, pg_url: str, out: Path) -> int:
    """Build a log of ``n`` entries on each database and time proofs in it; a table to ``out``."""
    kinds = ["sqlite"] + (["postgresql"] if _pg_ok(pg_url) is None else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        home = tmp / "home"
        generate_owner_key(home, "bench", "bench", kdf_rounds=1000)
        for kind in kinds:
            with _database(kind, pg_url, tmp) as url:
                build_log(url, home, n)
                sizes = [m for m in (10**3, 10**4, 10**5, 10**6) if m <= n]
                for m, incl, cons, hashes in proof_times(url, sizes):
                    load = os.getloadavg()[0]
                    rows.append(
                        f"| {kind} | {n:,} | {m:,} | {hashes} | {incl:.2f} | {cons:.2f} | {load:.1f} |"
                    )
                    print(rows[-1], flush=True)
    out.write_text("\n".join([
        f"# Proof times (`python -m benchmarks.registry --proofs-only {n}`)",
        "",
        "Mean of 200 `Registry.inclusion_proof(i, m)` and 200 `Registry.consistency_proof(k, m)` "
        "for trees of m entries inside a log of the size shown.",
        "",
        "| database | log size | tree size m | inclusion hashes | inclusion ms | consistency ms | load |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
    ]))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pg", default=PG_DEFAULT, help="PostgreSQL URL (a schema is created)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--audit-cpu", type=int, metavar="N",
                        help="only: the CPU time of a one-process audit of N entries")
    parser.add_argument("--proofs-only", type=int, metavar="N",
                        help="only: proof times in logs of N entries on both databases (to --out)")
    parser.add_argument("--parts", default="appends,audit,proofs",
                        help="comma-separated: appends, audit, proofs (the 10^6-entry log); the "
                        "results file keeps its other sections")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "registry.md"))
    args = parser.parse_args()
    if args.worker:
        return _worker(args.worker)
    if args.audit_cpu:
        print(audit_cpu(args.audit_cpu))
        return 0
    if args.proofs_only:
        return proofs_only(args.proofs_only, args.pg, Path(args.out))

    parts = set(args.parts.split(","))
    if not parts <= {"appends", "audit", "proofs"}:
        parser.error(f"--parts: unknown {', '.join(sorted(parts - {'appends', 'audit', 'proofs'}))}")
    single_n, procs, each = (300, 8, 50) if args.quick else (2000, 8, 250)
    verify_sizes = [1000, 5000] if args.quick else [10_000, 100_000]
    proof_max = 10**4 if args.quick else 10**6
    kinds = ["sqlite"]
    pg_reason = _pg_ok(args.pg)
    if pg_reason is None:
        kinds.append("postgresql")
    load_start = os.getloadavg()[0]
    rows: list[str] = []
    verify_rows: list[str] = []
    proof_rows: list[str] = []

    def proofs(kind: str, url: str, largest: int) -> None:
        sizes = [n for n in (10**3, 10**4, 10**5, 10**6) if n <= largest]
        for n, incl, cons, hashes in proof_times(url, sizes):
            proof_rows.append(f"| {kind} | {largest:,} | {n:,} | {hashes} | {incl:.2f} | {cons:.2f} |")
            print(proof_rows[-1], flush=True)

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        home = tmp / "home"
        generate_owner_key(home, "bench", "bench")
        for kind in kinds:
            if "appends" in parts:
                with _database(kind, args.pg, tmp) as url:
                    one = single_writer(url, home, single_n)
                with _database(kind, args.pg, tmp) as url:
                    eight = many_writers(url, home, tmp, procs, each)
                load = os.getloadavg()[0]
                rows.append(f"| {kind} | {one:,.0f} | {eight:,.0f} | {eight / one:.2f} | {load:.1f} |")
                print(rows[-1], flush=True)
            for n in verify_sizes if "audit" in parts else []:
                with _database(kind, args.pg, tmp) as url:
                    secs, secs2, build, cpu, cpu2 = verify_time(url, home, n)
                    load = os.getloadavg()[0]
                    verify_rows.append(
                        f"| {kind} | {n:,} | {secs:.2f} | {cpu:.2f} | {secs2:.2f} | {cpu2:.2f} "
                        f"| {n / min(secs, secs2):,.0f} | {build:,.0f} | {load:.1f} |"
                    )
                    print(verify_rows[-1], flush=True)
                    if "proofs" in parts and n == verify_sizes[-1] and (kind != "sqlite" or proof_max <= n):
                        proofs(kind, url, n)
        if "proofs" in parts and proof_max > verify_sizes[-1]:  # the largest log last: slowest to build
            with _database("sqlite", args.pg, tmp) as url:
                build_log(url, home, proof_max)
                proofs("sqlite", url, proof_max)
    head = [
        "# Registry benchmark",
        "",
        f"`python -m benchmarks.registry{' --quick' if args.quick else ''}"
        f"{'' if args.parts == 'appends,audit,proofs' else ' --parts ' + args.parts}` on "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"load average {load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end "
        "(the machine is shared; every figure moves with the load, so each row gives the load "
        "when it was taken)"
        + ("." if parts == {"appends", "audit", "proofs"} else
           f"; only {', '.join(sorted(parts))} measured in this run, the other sections are "
           "kept from the run before."),
        "",
    ]
    appends = [
        "## Appends per second",
        "",
        f"One writer: {single_n} appends in one process. Eight writers: {procs} processes x "
        f"{each} appends at once, timed from the start signal until the last append returned (not the "
        "processes' exit). Each append is "
        "signed (Ed25519 over the DSSE PAE) at its place in the log. On PostgreSQL the writers "
        "queue their records and whichever holds the log head appends all that are queued in one "
        "transaction (registry/sequencer.py); on SQLite they take turns on the file lock.",
        "",
        "| database | one writer | eight processes | eight / one | load |",
        "| --- | ---: | ---: | ---: | ---: |",
        *rows,
        "",
    ]
    if pg_reason is not None:
        head += [f"PostgreSQL skipped: {pg_reason}", ""]
    audit = [
        "## `wm audit verify` (Registry.verify_log)",
        "",
        "Streams the log in batches of 4,096 and recomputes every leaf hash, Ed25519 signature, "
        "signed index, previous root and probe-set count, every stored tree node, the head and "
        "one checkpoint. Logs built with `append_many` (batches of 5,000). One run with the "
        "signatures checked in this process, then one with 2 worker processes "
        "(`wm audit verify --workers 2`). CPU s: this process and its workers (user + system; "
        "not the PostgreSQL server's), the figure other load on the machine distorts least.",
        "",
        "| database | entries | verify s, 1 process | CPU s | verify s, 2 workers | CPU s "
        "| entries/s verified (best) | entries/s appended in batches | load |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *verify_rows,
        "",
    ]
    proofs_part = [
        "## Proofs from stored tree nodes (RFC 9162)",
        "",
        "Mean time of `Registry.inclusion_proof(i, n)` and `Registry.consistency_proof(m, n)` over "
        "200 proofs each (one database transaction, O(log n) node reads), for trees of n entries "
        "inside a log of the size shown.",
        "",
        "| database | log size | tree size n | inclusion hashes | inclusion ms | consistency ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *proof_rows,
        "",
    ]
    out = Path(args.out)
    old = _sections(out.read_text()) if out.exists() else {}
    text = "\n".join(head) + "\n"
    for part, lines in (("appends", appends), ("audit", audit), ("proofs", proofs_part)):
        text += "\n".join(lines) + "\n" if part in parts else old.get(lines[0], "")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


def _sections(text: str) -> dict[str, str]:
    """A results file's ``## `` sections by heading line (each with its trailing blank line)."""
    return {chunk.split("\n", 1)[0]: chunk for chunk in re.split(r"(?m)^(?=## )", text)
            if chunk.startswith("## ")}


if __name__ == "__main__":
    sys.exit(main())
