"""`agentkv serve` flags: bad input is one line on stderr and exit 2, before any model is loaded."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from agentkv.cli import main
from tests.server.conftest import LiveServer


def run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse rejects a flag by exiting
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("flags", "message"), [
    (["--model", "/no/such/folder"], "--model /no/such/folder: no such folder"),
    (["--max-num-seqs", "0"], "argument --max-num-seqs: must be > 0, got 0"),
    (["--max-queue", "-1"], "--max-queue must be >= 0, got -1"),
    (["--tool-call-parser", "xml"], "argument --tool-call-parser: invalid choice: 'xml'"),
])
def test_bad_flags_exit_2_in_one_line(plain_dir, capsys, flags, message):
    code, err = run(["serve", "--model", str(plain_dir), *flags], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_bad_api_keys_file_names_the_line(plain_dir, tmp_path, capsys):
    keys = tmp_path / "keys"
    keys.write_text("sk-a acme\nsk-b\n")
    code, err = run(["serve", "--model", str(plain_dir), "--api-keys", str(keys)], capsys)
    assert code == 2 and err.strip() == f"agentkv: error: --api-keys {keys}:2: expected two fields 'KEY TENANT', found 1"


@pytest.fixture(scope="module")
def unloadable(plain_dir, tmp_path_factory) -> Path:
    """The plain checkpoint with its weights cut short: an error that names a flag, not the weights, was found
    before the model loaded. Also an empty file and a folder, for the file flags."""
    d = tmp_path_factory.mktemp("unloadable")
    for f in plain_dir.iterdir():
        data = f.read_bytes()
        (d / f.name).write_bytes(data[:300] if f.suffix == ".safetensors" else data)
    (d / "empty.txt").write_text("  \n")
    return d


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


CHECKED_FIRST = [  # (flags, the one line's text); {d}: the unloadable checkpoint's folder
    (["--port", "-1"], "argument --port: must be in 1..65535, got -1"),
    (["--port", "70000"], "argument --port: must be in 1..65535, got 70000"),
    (["--port", "http"], "argument --port: expected a port number, got 'http'"),
    (["--port", "{busy}"], "--port {busy}: cannot listen on 127.0.0.1:{busy} (Address already in use); another "
                           "process holds the port"),
    (["--host", "10.255.255.1"], "--host 10.255.255.1: cannot listen on 10.255.255.1:8000"),
    (["--api-keys", "{d}"], "--api-keys {d}: Is a directory"),
    (["--api-keys", "{d}/none.txt"], "--api-keys {d}/none.txt: No such file or directory"),
    (["--api-keys", "{d}/empty.txt"], "--api-keys {d}/empty.txt: no API keys"),
    (["--public-prefix", "{d}"], "--public-prefix {d}: Is a directory"),
    (["--public-prefix", "{d}/empty.txt"], "--public-prefix {d}/empty.txt: the file is empty"),
    (["--kv-cache-gb", "100000"], "--kv-cache-gb 100000: a KV pool of 97.7 TiB does not fit in the"),
    (["--policy", "belady"], "--policy belady: serve runs an online policy: lru, lfu, cost, agent"),
    (["--kv-codec", "int3"], "--kv-codec: "),
    (["--kv-tiers", "hbm=2GiB"], "--kv-tiers: 'hbm=2GiB': expected NAME=SIZE[@LOCATION]"),
    (["--max-model-len", "100000"], "--max-model-len must be in [2, 4096] (the model's context), got 100000"),
]


@pytest.mark.parametrize(("flags", "line"), CHECKED_FIRST, ids=[" ".join(f) for f, _ in CHECKED_FIRST])
def test_every_flag_and_file_is_checked_before_the_model_loads(unloadable, busy_port, capsys, flags, line):
    fill = {"d": str(unloadable), "busy": str(busy_port)}
    code, err = run(["serve", "--model", str(unloadable), *[f.format(**fill) for f in flags]], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert line.format(**fill) in err, err


def test_one_startup_summary_says_what_is_served(plain_dir, tmp_path, capfd):
    keys = tmp_path / "keys"
    keys.write_text("sk-a acme\nsk-b beta\nsk-c beta\n")
    bare = tmp_path / "bare"
    shutil.copytree(plain_dir, bare)
    (bare / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>"}))
    for folder, flags in ((plain_dir, ["--kv-tiers", "dram=1MiB", "--api-keys", str(keys)]), (bare, [])):
        server = LiveServer(["--model", str(folder), "--served-model-name", "tiny", "--kv-cache-gb", "0.001",
                             "--max-model-len", "1024", *flags])
        server.stop()
    lines = [x for x in capfd.readouterr().err.splitlines() if x.startswith("agentkv serve:")]
    assert len(lines) == 2
    assert lines[0].startswith("agentkv serve: model tiny (2 layers, float32) on cpu; window 1,024 tokens; KV pool ")
    assert "blocks of 16 tokens (1.0 MiB), codec fp32; tiers below: dram " in lines[0]
    assert "policy lru; tenants: 2 from --api-keys (keys required); public prefixes: 0; chat template: present" \
        in lines[0]
    assert "tiers below: none" in lines[1] and "tenants: one, open (no --api-keys)" in lines[1]
    assert lines[1].endswith("chat template: none: /v1/chat/completions and /v1/messages will answer 400; "
                             "/v1/completions works")


def test_a_tier_smaller_than_a_page_names_the_flag_and_the_units(plain_dir):
    from agentkv.cli import build_parser
    from agentkv.cli_errors import UsageError
    from agentkv.server.serve import build

    args = build_parser().parse_args(["serve", "--model", str(plain_dir), "--kv-cache-gb", "0.001", "--kv-tiers",
                                      "dram=8"])
    with pytest.raises(UsageError, match=r"^--kv-tiers dram=8: .*\(sizes are tokens, e\.g\. 64k, or bytes"):
        build(args)
