"""A lineage's files: promotion is a compare-and-swap, readers never see a torn current steering,
rollback republishes a recorded one, history and used prompts accumulate."""

from __future__ import annotations

import hashlib
import threading

import pytest

from sims_core.errors import ConfigError, UserError
from storage.lineage import Lineage, LineageConflictError


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_promotion_publishes_atomically_and_records_history(tmp_path):
    lineage = Lineage(str(tmp_path), "bot")
    assert lineage.pointer() is None and lineage.current_steering() is None and not lineage.exists()
    first = b"A" * 200_000
    lineage.promote("night-1", 2, first, b"bank-1", {"win_rate": 0.6}, expected_sha256=None)
    lineage.record_night("night-1", {"promoted": True, "reason": "better"}, ["p1", "p2"])
    assert lineage.pointer()["run_id"] == "night-1" and lineage.pointer()["sha256"] == _sha(first)
    assert lineage.current_steering() == first and lineage.current_buffer() == b"bank-1"
    assert (tmp_path / "lineages" / "bot" / "current.safetensors").read_bytes() == first

    with pytest.raises(LineageConflictError, match="the current steering changed since run night-2 started"):
        lineage.promote("night-2", 1, b"B", None, {}, expected_sha256=None)  # it started before night-1's promotion
    lineage.record_night("night-2", {"promoted": False, "reason": "kept"}, ["p3"])
    assert lineage.used_prompt_ids() == {"p1", "p2", "p3"}
    assert [n["run_id"] for n in lineage.nights()] == ["night-1", "night-2"]
    assert lineage.promoted_runs() == ["night-1"]


def test_a_reader_during_promotions_sees_the_old_or_the_new_file_whole(tmp_path):
    lineage = Lineage(str(tmp_path), "bot")
    payloads = [bytes([i]) * 3_000_000 for i in range(2)]
    shas = {_sha(p) for p in payloads}
    lineage.promote("n0", 1, payloads[0], None, {}, expected_sha256=None)
    path = tmp_path / "lineages" / "bot" / "current.safetensors"
    seen, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            seen.append(_sha(path.read_bytes()))

    reader = threading.Thread(target=read)
    reader.start()
    current = _sha(payloads[0])
    for k in range(1, 21):
        data = payloads[k % 2]
        lineage.promote(f"n{k}", 1, data, None, {}, expected_sha256=current)
        current = _sha(data)
    stop.set()
    reader.join()
    assert seen and set(seen) <= shas  # every read was one whole file


def test_rollback_republishes_the_previous_promoted_steering(tmp_path):
    lineage = Lineage(str(tmp_path), "bot")
    lineage.promote("n1", 1, b"one", b"bank-1", {}, expected_sha256=None)
    lineage.record_night("n1", {"promoted": True, "iteration": 1}, [])
    lineage.promote("n2", 1, b"two", None, {}, expected_sha256=_sha(b"one"))
    lineage.record_night("n2", {"promoted": True, "iteration": 1}, [])
    pointer = lineage.rollback()
    assert pointer["run_id"] == "n1" and pointer["event"] == "rollback"
    assert lineage.current_steering() == b"one" and lineage.current_buffer() == b"bank-1"
    with pytest.raises(UserError, match="has no earlier promoted steering to roll back to"):
        lineage.rollback()
    assert lineage.rollback("n2")["sha256"] == _sha(b"two")
    with pytest.raises(
        UserError, match="run 'n9' was never promoted in lineage 'bot'; promoted runs: \\['n1', 'n2'\\]"
    ):
        lineage.rollback("n9")


def test_a_pointer_that_does_not_match_its_file_is_refused(tmp_path):
    lineage = Lineage(str(tmp_path), "bot")
    lineage.promote("n1", 1, b"one", None, {}, expected_sha256=None)
    (tmp_path / "lineages" / "bot" / "current.safetensors").write_bytes(b"edited")
    with pytest.raises(UserError, match="does not match the sha256 its pointer current.json records"):
        lineage.current_steering()


def test_lineage_names_are_checked():
    with pytest.raises(ConfigError, match="lineage 'no way' is not a valid name"):
        Lineage("/tmp", "no way")
