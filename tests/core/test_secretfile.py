"""The watermark secret sidecar: one format, read alike by ``watermark`` and ``registry``."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from core.canonical import b64e, canonical_json, parse_json
from core.errors import InputError, KeyError_
from core.secretfile import read_secret_file, write_secret_file
from registry.register import read_watermark_secret
from tests.core.test_probeset import make
from watermark.keys import WatermarkKey
from watermark.secret import WatermarkSecret, read_secret, write_secret

KEY = bytes(range(32))


def test_a_secret_written_by_training_reads_the_same_in_both_packages(tmp_path: Path) -> None:
    first, second = make(6, seed=1), make(4, seed=2)
    path = write_secret(tmp_path / "m.pt2.wmkey", WatermarkSecret(WatermarkKey(KEY), first, (second,)))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    back = read_secret(path)
    assert back.key.secret == KEY and back.probes.root == first.root
    assert [s.root for s in back.more] == [second.root]
    key, probes = read_watermark_secret(path)
    assert key == KEY and probes.root == first.root
    assert read_secret_file(path)[2][0].root == second.root


def _doc(**change: Any) -> dict[str, Any]:
    ps = make(5)
    doc: dict[str, Any] = {"type": "wm.watermark-secret/v1", "key": b64e(KEY), "scheme": ps.scheme,
                           "probeset": b64e(ps.to_bytes())}
    for name, value in change.items():
        if value is None:
            doc.pop(name)
        else:
            doc[name] = value
    return doc


MALFORMED = {
    "another type": (_doc(type="wm.owner-key/v1"), "is not a wm.watermark-secret/v1 file"),
    "no key": (_doc(key=None), "lacks its key or probe set"),
    "key not a string": (_doc(key=7), "lacks its key or probe set"),
    "short key": (_doc(key=b64e(KEY[:16])), "its key is not 32 bytes"),
    "no probe set": (_doc(probeset=None), "lacks its key or probe set"),
    "scheme of another set": (_doc(scheme="trigger-set:n=99"), "scheme differs from its probe set's"),
    "further sets not a list": (_doc(more="x"), "further probe sets are malformed"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_both_packages_refuse_a_malformed_secret_without_quoting_it(case: str, tmp_path: Path) -> None:
    doc, message = MALFORMED[case]
    path = tmp_path / "m.pt2.wmkey"
    path.write_bytes(canonical_json(doc))
    for read in (read_secret, read_watermark_secret, read_secret_file):
        with pytest.raises(InputError, match=message) as info:
            read(path)
        assert b64e(KEY) not in str(info.value) and KEY.hex() not in str(info.value)


def test_not_json_and_missing_files_are_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "m.pt2.wmkey"
    path.write_bytes(b"\xff not json")
    for read in (read_secret, read_watermark_secret):
        with pytest.raises(InputError, match="is not valid JSON"):
            read(path)
    with pytest.raises(KeyError_, match="does not exist"):
        read_secret(tmp_path / "absent.wmkey")
    with pytest.raises(InputError, match="cannot read watermark secret"):
        read_watermark_secret(tmp_path / "absent.wmkey")


def test_the_writer_emits_the_documented_fields_only(tmp_path: Path) -> None:
    one = parse_json(write_secret_file(tmp_path / "a", KEY, (make(3),)).read_bytes(), what="a")
    assert sorted(one) == ["key", "probeset", "scheme", "type"]
    two = parse_json(write_secret_file(tmp_path / "b", KEY, (make(3), make(2))).read_bytes(), what="b")
    assert sorted(two) == ["key", "more", "probeset", "scheme", "type"]
    with pytest.raises(InputError):
        write_secret_file(tmp_path / "c", KEY, ())
