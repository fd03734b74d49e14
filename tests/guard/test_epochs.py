"""Nulls nobody chooses: guard epoch keys are committed in the signed log before they mark, and an
opened key lets a checker re-derive every guard probe from its input bytes (:mod:`core.marking`)."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from core.errors import IntegrityError
from core.marking import MarkingFunction, canonical_bytes, key_commitment
from guard.clients import ClientKeys
from guard.epochs import GUARD_EPOCH_TYPE, current_epoch, epochs, rotate_epoch
from guard.journal import GUARD_QUERIES_TYPE
from guard.probes import commit_guard_probes
from guard.service import open_vault
from registry.keys import generate_owner_key
from registry.log import Registry
from tests.guard.conftest import MODEL, PASSPHRASE, Owner, digits_queries, guarded, oip_body


def test_an_epoch_is_committed_before_its_first_mark_and_its_key_is_never_in_clear(owner: Owner) -> None:
    x = digits_queries(40)
    with guarded(owner, rate=0.5) as g, httpx.Client() as c:
        c.post(g.infer_url(g.guard.url), json=oip_body(x)).raise_for_status()
    with Registry.open(owner.registry_url) as reg:
        commits = reg.entries(payload_type=GUARD_EPOCH_TYPE)
        batches = reg.entries(payload_type=GUARD_QUERIES_TYPE)
        known = epochs(reg, owner.key, MODEL)
    assert len(commits) == 1 and batches and commits[0].index < batches[0].index
    record = commits[0].record
    key = known[0].key
    assert record["key_commitment"] == key_commitment(key) and record["rate"] == 0.5
    assert record["classes"] == 10 and commits[0].key_id == owner.key.key_id
    disk = b"".join(p.read_bytes() for p in owner.home.rglob("*") if p.is_file())
    assert key not in disk and base64.b64encode(key) not in disk and key.hex().encode() not in disk


def test_epochs_last_until_the_rate_changes_or_the_owner_rotates(owner: Owner) -> None:
    with Registry.open(owner.registry_url) as reg:
        first = current_epoch(reg, owner.key, MODEL, 0.1, 10)
        assert current_epoch(reg, owner.key, MODEL, 0.1, 10) == first  # a restart keeps it
        second = current_epoch(reg, owner.key, MODEL, 0.2, 10)
        third = rotate_epoch(reg, owner.key, MODEL, 0.2, 10)
        assert (first.number, second.number, third.number) == (0, 1, 2)
        assert len({first.key, second.key, third.key}) == 3
        assert current_epoch(reg, owner.key, MODEL, 0.2, 10) == third


def test_another_owners_epoch_records_are_ignored(owner: Owner, tmp_path: pytest.TempPathFactory) -> None:
    mallory = generate_owner_key(owner.home / "mallory", "mallory", PASSPHRASE)
    with Registry.open(owner.registry_url) as reg:
        rotate_epoch(reg, mallory, MODEL, 1.0, 10)  # a forged epoch in the owner's name of model
        assert epochs(reg, owner.key, MODEL) == {}
        assert current_epoch(reg, owner.key, MODEL, 0.1, 10).number == 0


def test_an_opened_key_re_derives_every_guard_probe_and_a_changed_label_fails(owner: Owner) -> None:
    """What the offline checker does with a key `wm verify --open-keys` revealed."""
    x = digits_queries(120)
    with guarded(owner, rate=0.3) as g, httpx.Client() as c:
        for i in range(0, len(x), 8):
            c.post(g.infer_url(g.guard.url), json=oip_body(x[i:i + 8])).raise_for_status()
    with Registry.open(owner.registry_url) as reg:
        result = commit_guard_probes(reg, owner.key, open_vault(owner.home, owner.key, MODEL), MODEL)
        ps = reg.load_probeset(result.probeset_ids[0], owner.key)
        opened = epochs(reg, owner.key, MODEL)[0]
    # Only public or opened material from here on: the scheme, the key, the probes.
    fields = dict(part.split("=", 1) for part in ps.scheme.split(":")[1:])
    assert fields["key"] == key_commitment(opened.key) and fields["epoch"] == "0"
    f = MarkingFunction(opened.key, float(fields["rate"]), int(fields["classes"]))
    decisions = [f.decide(canonical_bytes(ps.inputs[i].numpy())) for i in range(len(ps))]
    assert len(ps) > 15 and all(d.marked for d in decisions)
    assert [d.label for d in decisions] == ps.expected.tolist()
    forged = ps.expected.clone()
    forged[0] = (forged[0] + 1) % 10
    assert [d.label for d in decisions] != forged.tolist()


def test_a_record_under_an_uncommitted_epoch_is_not_a_probe(owner: Owner) -> None:
    x = digits_queries(40)
    with guarded(owner, rate=1.0) as g, httpx.Client() as c:
        c.post(g.infer_url(g.guard.url), json=oip_body(x)).raise_for_status()
    with Registry.open(owner.registry_url) as reg:
        batch = reg.entries(payload_type=GUARD_QUERIES_TYPE)[0].record
        forged = {**batch, "journal": "f" * 32,
                  "records": [{**r, "key_epoch": 7} for r in batch["records"]]}
        reg.append(owner.key, GUARD_QUERIES_TYPE, forged)
        with pytest.raises(IntegrityError, match="epoch 7 was never committed"):
            commit_guard_probes(reg, owner.key, open_vault(owner.home, owner.key, MODEL), MODEL)


def test_core_marking_loads_without_torch() -> None:
    code = "import sys, core.marking; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_wm_guard_rotate_and_clients_add(owner: Owner, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli.main import _register_commands, wm

    _register_commands()
    runner = CliRunner()
    r = runner.invoke(wm, ["--home", str(owner.home), "guard", "rotate", "--model", MODEL, "--rate", "0.05"])
    assert r.exit_code == 0, r.output
    with Registry.open(owner.registry_url) as reg:
        known = epochs(reg, owner.key, MODEL)
    assert r.stdout.startswith(f"guard epoch 0 of {MODEL!r} committed") and known[0].rate == 0.05
    assert known[0].commitment[:16] in r.stdout
    r = runner.invoke(wm, ["--home", str(owner.home), "guard", "rotate", "--model", "nope"])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    clients = tmp_path / "clients.json"
    r = runner.invoke(wm, ["guard", "clients", "add", "alice", "--clients", str(clients)])
    assert r.exit_code == 0 and r.stdout.startswith("wmk_")
    assert ClientKeys.load(clients).identify([(b"x-api-key", r.stdout.strip().encode())]) == "client:alice"
    r = runner.invoke(wm, ["guard", "clients", "add", "alice", "--clients", str(clients)])
    assert r.exit_code == 2 and "already has a key" in r.stderr
