"""The kv_tiers string: what parses, in which order, and errors that name the bad part."""

from __future__ import annotations

import pytest

from agentkv.storage.spec import parse_kv_tiers


def test_parses_all_tiers_fastest_first():
    tiers = parse_kv_tiers("redis=20GiB@redis://10.0.0.5:6379, disk=100GiB@/mnt/nvme/kv,dram=8GiB")
    assert [(t.kind, t.core_name, t.location) for t in tiers] == [
        ("dram", "dram", None), ("disk", "disk", "/mnt/nvme/kv"), ("redis", "remote", "redis://10.0.0.5:6379")]
    assert tiers[0].size.is_bytes and tiers[0].size.value == 8 * 2**30
    assert not parse_kv_tiers("disk=2M@/tmp/x")[0].size.is_bytes  # tokens, as `cache sweep --tiers` reads them


def test_redis_url_with_password_keeps_its_at_sign():
    assert parse_kv_tiers("redis=1GiB@redis://:secret@host:6379/2")[0].location == "redis://:secret@host:6379/2"


@pytest.mark.parametrize(("text", "names"), [
    ("hbm=8GiB", "'hbm=8GiB'"),
    ("dram", "'dram'"),
    ("dram=8 parsecs", "bad capacity"),
    ("dram=0GiB", "positive"),
    ("dram=8GiB@/tmp", "dram takes no @LOCATION"),
    ("disk=8GiB", "disk needs a directory"),
    ("redis=8GiB@localhost:6379", "redis needs a URL"),
    ("dram=1GiB,dram=2GiB", "given twice"),
    ("dram=1GiB,,disk=1GiB@/x", "empty tier"),
])
def test_errors_name_the_bad_part(text, names):
    with pytest.raises(ValueError, match=names.replace("(", r"\(")):
        parse_kv_tiers(text)


def test_generate_rejects_a_bad_kv_tiers_flag_in_one_line(tmp_path, capsys):
    from agentkv.cli import main

    assert main(["generate", "--model", str(tmp_path), "--prompt", "hi", "--kv-tiers", "redis=1GiB@localhost"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("agentkv: error: --kv-tiers: 'redis=1GiB@localhost': redis needs a URL, "
                   "e.g. redis=20GiB@redis://127.0.0.1:6379")
