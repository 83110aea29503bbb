"""`agentkv serve` flags: bad input is one line on stderr and exit 2, before any model is loaded."""

from __future__ import annotations

import pytest

from agentkv.cli import main


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
    assert code == 2 and err.strip() == f"agentkv: error: {keys}:2: expected two fields 'KEY TENANT', found 1"
