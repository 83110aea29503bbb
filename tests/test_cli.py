"""The `agentkv` command, run as a user runs it."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agentkv import __version__ as agentkv_version
from tests.conftest import CLAUDE_CODE, MOONCAKE, need


def agentkv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentkv.cli", *args], capture_output=True, text=True, timeout=300)


def test_trace_stats_json_on_a_real_trace():
    r = agentkv("trace", "stats", str(need(MOONCAKE)), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["input"]["p99"] == 85_401 and s["requests"] == 12_031


def test_default_main_job_runs_on_the_generated_workload():
    r = agentkv("trace", "stats", "--gen-sessions", "30")
    assert r.returncode == 0, r.stderr
    assert "trace stats: generator" in r.stdout and "share of requests over 128k" in r.stdout


def test_trace_stats_reports_the_generators_fit_to_a_real_trace():
    r = agentkv("trace", "stats", "--fit", str(need(CLAUDE_CODE)), "--gen-sessions", "40", "--json")
    assert r.returncode == 0, r.stderr
    fit = {row["figure"]: row for row in json.loads(r.stdout)["fit"]}
    assert fit["token_weighted_median"]["real"] == 158_577 and fit["share_over_400k"]["dossier"] is None
    assert fit["request_median"]["generated"] == json.loads(r.stdout)["input"]["p50"]
    table = agentkv("trace", "stats", "--fit", str(need(CLAUDE_CODE)), "--gen-sessions", "40")
    assert "generator fit" in table.stdout and "token weighted median" in table.stdout


def test_generate_then_read_back(tmp_path):
    out = tmp_path / "g.npz"
    r = agentkv("trace", "generate", "--sessions", "12", "--seed", "5", "--out", str(out),
                "--config-out", str(tmp_path / "g.json"))
    assert r.returncode == 0, r.stderr
    s = json.loads(agentkv("trace", "stats", str(out), "--json").stdout)
    assert s["top_level_sessions"] == 12
    again = agentkv("trace", "stats", "--gen-config", str(tmp_path / "g.json"), "--gen-seed", "5", "--json")
    assert json.loads(again.stdout)["input_tokens"] == s["input_tokens"]


def test_bad_input_exits_2_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1]}\n{"timestamp": 1}\n')
    r = agentkv("trace", "stats", str(bad))
    assert r.returncode == 2
    assert f"{bad}:line 2: field 'input_length': missing" in r.stderr
    r = agentkv("trace", "stats", str(bad), "--skip-bad")
    assert r.returncode == 0 and "skipped 1 bad records" in r.stdout


def test_cache_sweep_writes_table_csv_json_png(tmp_path):
    out = tmp_path / "sw"
    r = agentkv("cache", "sweep", "--gen-sessions", "15", "--capacity", "64k,256k", "--policy", "lru,agent",
                "--tiers", "dram=4x", "--concurrency", "5", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "infinite cache" in r.stdout
    assert "agent @ 64k: recomputes" in r.stdout and "vs LRU" in r.stdout  # tiered: no Belady bound to close
    rows = list(csv.DictReader((out / "sweep.csv").read_text().splitlines()))
    assert {row["policy"] for row in rows} == {"lru", "agent", "belady"}
    assert len(rows) == 6
    for row in rows:
        total = float(row["hit_rate"])
        assert total == pytest.approx(float(row["hit_rate_gpu"]) + float(row["hit_rate_dram"]), abs=1e-5)
    doc = json.loads((out / "sweep.json").read_text())
    assert 0 < doc["infinite_hit_rate"] <= 1 and doc["tiers"] == "dram=4x"
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_gpu_only_cache_sweep_reports_the_belady_gap(tmp_path):
    # 256k: a GPU that holds a couple of the workload's ~110k median contexts (at 64k every policy misses alike)
    r = agentkv("cache", "sweep", "--gen-sessions", "10", "--capacity", "256k", "--policy", "lru,agent",
                "--concurrency", "5", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "agent @ 256k: closes" in r.stdout and "of the LRU→Belady gap" in r.stdout


def test_cache_sweep_rejects_bad_input(tmp_path):
    r = agentkv("cache", "sweep", "--gen-sessions", "3", "--tiers", "hbm=2x", "--out", str(tmp_path))
    assert r.returncode == 2 and "--tiers: 'hbm=2x': expected NAME=SIZE[@LOCATION] with NAME one of dram, disk, remote" in r.stderr
    r = agentkv("cache", "sweep", "--gen-sessions", "3", "--capacity", "lots", "--out", str(tmp_path))
    assert r.returncode == 2 and "bad capacity 'lots'" in r.stderr
    csv_trace = tmp_path / "a.csv"
    csv_trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9,100,3\n")
    r = agentkv("cache", "sweep", str(csv_trace), "--out", str(tmp_path))
    assert r.returncode == 2 and "no prefix information (block ids" in r.stderr


def test_report_rejects_a_negative_sample_before_any_work(tmp_path):
    r = agentkv("report", "--sample-sessions", "-1", "--out", str(tmp_path / "r.html"))
    assert r.returncode == 2 and "--sample-sessions must be >= 0, got -1" in r.stderr


def test_ray_flags_without_ray_installed_exit_2_naming_the_extra(tmp_path):
    hide_ray = "import sys; sys.modules['ray'] = None; from agentkv.cli import main; sys.exit(main(sys.argv[1:]))"
    for args, flag in ((["report", "--ray", "--out", str(tmp_path / "r.html")], "--ray"),
                       (["cache", "sweep", "--ray", "--out", str(tmp_path)], "--ray"),
                       (["serve", "--model", str(tmp_path), "--replicas", "2"], "--replicas")):
        r = subprocess.run([sys.executable, "-c", hide_ray, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and f"{flag}: Ray is not installed here (pip install -e '.[ray]' in the agentkv clone)" in r.stderr


# what the extras bring (pyproject's optional dependencies): none of it may be needed by the main job
EXTRA_MODULES = ("torch", "safetensors", "tokenizers", "jinja2", "llguidance", "xxhash", "redis", "hiredis",
                 "fastapi", "starlette", "uvicorn", "prometheus_client", "httpx", "pydantic", "triton", "ray")


def test_the_main_job_runs_on_a_core_install(tmp_path):
    """README's first command installs agentkv without extras: `agentkv report` (and the CLI's parser, which
    holds `serve`'s flags too) must not import them. Each is blocked here as if not installed."""
    code = (f"import sys; sys.modules.update(dict.fromkeys({EXTRA_MODULES!r})); from agentkv.cli import main; "
            f"sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "report", "--gen-sessions", "4", "--workers", "1",
                        "--concurrency", "2", "--out", str(tmp_path / "r.html")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "r.json").read_text())["headline"]


def test_report_small_run_end_to_end(tmp_path):
    out = tmp_path / "r.html"
    r = agentkv("report", "--gen-sessions", "8", "--workers", "1", "--concurrency", "4", "--out", str(out),
                "--deployment", "hardware=h100-sxm,slo_ttft_s=30")
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    levers = ["baseline", "+IO-aware attention", "+prefix cache (HBM)", "+fp8 KV", "+int4 KV", "+DRAM tier",
              "+disk tier", "+agent-aware policy"]
    for view in ("same_fleet", "sized_to_slo", "capacity_per_gpu"):
        assert [row["lever"] for row in doc[view]["rows"]] == levers
    fleet = {row["lever"]: row for row in doc["same_fleet"]["rows"]}
    assert fleet["baseline"]["hit_pct"] == 0 and fleet["+IO-aware attention"]["hit_pct"] == 0
    assert fleet["+prefix cache (HBM)"]["hit_pct"] > 50
    assert fleet["+IO-aware attention"]["ttft_p50_s"] < fleet["baseline"]["ttft_p50_s"]
    sized = {row["lever"]: row for row in doc["sized_to_slo"]["rows"]}
    assert sized["+int4 KV"]["slo_met"] and sized["+int4 KV"]["gpus"] >= 1
    assert {p["provider"] for p in doc["api_providers"]["rows"]} >= {"anthropic", "openai", "deepseek"}
    assert all(0 < p["saving_pct"] < 100 for p in doc["api_providers"]["rows"])
    page = out.read_text()
    assert "<img" in page and "data:image/png;base64," in page and 'src="' not in page  # one self-contained file
    assert not (tmp_path / "r_files").exists()
    assert "The same traffic at API providers" in r.stdout and "openai" in r.stdout


def test_report_model_view_and_window_enforcement(tmp_path):
    """A 131k model on traffic reaching 400k: the headline opens with what is over its window, the requests
    over it are rejected with their sessions and counted; the model view sizes each candidate on its own fitted
    trace."""
    out = tmp_path / "r.html"
    r = agentkv("report", "--gen-sessions", "4", "--workers", "1", "--concurrency", "2", "--out", str(out),
                "--deployment", "model=gpt-oss-120b,weight_dtype=fp8", "--over-window", "reject",
                "--candidates", "gpt-oss-120b,qwen3-next-80b-a3b")
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    window = doc["context_window"]
    assert window["window"] == 131072 and window["over"] > 0 and window["rejected"] >= window["over"]
    assert doc["headline"][0].startswith("Context window: ") and "--over-window reject" in doc["headline"][0]
    assert doc["headline"][1].startswith("Model: gpt-oss-120b, as given; 1 × h200 with fp8 weights (as given), the "
                                         "fewest GPUs whose memory holds")
    rows = {row["model"]: row for row in doc["models"]["rows"]}
    cheapest = min((r for r in rows.values() if r["slo_met"]), key=lambda r: r["usd_per_mtok"])["model"]
    follows = ("The fleet and levers below are for gpt-oss-120b (named with --deployment), not for "
               f"{cheapest}: for {cheapest}'s, run the report with --deployment model={cheapest}.")
    assert (follows in doc["headline"][2]) == (cheapest != "gpt-oss-120b")  # the model view's answer, or why not
    assert list(rows) == ["gpt-oss-120b", "qwen3-next-80b-a3b"]
    assert rows["qwen3-next-80b-a3b"]["in_window_requests_pct"] >= rows["gpt-oss-120b"]["in_window_requests_pct"]
    assert all(row["kv_gib_median"] > 0 and row["contexts_per_gpu"] > 0 for row in rows.values())
    assert "Model choice" in r.stdout


def test_version():
    r = agentkv("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"agentkv {agentkv_version}"


def test_every_flag_has_help_and_says_its_default():
    from agentkv.cli import build_parser
    from agentkv.commands.report import REPORT_SESSIONS

    def parsers(p):
        yield p
        for action in p._actions:
            for sub in getattr(action, "choices", None).values() if isinstance(action.choices, dict) else ():
                yield from parsers(sub)

    for p in parsers(build_parser()):
        for action in p._actions:
            if action.option_strings and action.dest not in ("help", "version"):
                assert action.help, f"{p.prog} {action.option_strings[0]} has no help text"
    report = agentkv("report", "--help").stdout
    assert f"(default {REPORT_SESSIONS}" in " ".join(report.split())


def test_help_and_command_groups_without_their_subcommand():
    r = agentkv("--help")
    assert r.returncode == 0 and "agentkv: a prefix-shared, quantized, tiered KV cache" in " ".join(r.stdout.split())
    for group, commands in (("trace", ("stats", "generate", "convert")), ("cache", ("sweep",))):
        r = agentkv(group)
        assert r.returncode == 2 and r.stdout.startswith(f"usage: agentkv {group} ")
        assert all(c in r.stdout for c in commands) and "report" not in r.stdout


def test_trace_stats_fit_prints_the_fitted_parameters():
    real = str(need(MOONCAKE))
    r = agentkv("trace", "stats", "--fit", real, "--gen-sessions", "3")
    assert r.returncode == 0, r.stderr
    assert "generator fitted to" in r.stdout and "log-normal: median" in r.stdout
    assert r.stdout.index("generator fitted to") < r.stdout.index("trace stats: generator")
    doc = json.loads(agentkv("trace", "stats", "--fit", real, "--gen-sessions", "3", "--json").stdout)
    assert doc["generator"]["fitted_from"] and doc["generator"]["turns"] and doc["top_level_sessions"] == 3


def test_trace_generate_says_where_extra_sessions_come_from(tmp_path):
    r = agentkv("trace", "generate", "--sessions", "60", "--out", str(tmp_path / "t.npz"))
    assert r.returncode == 0, r.stderr
    top, subs = (int(x) for x in re.search(r"(\d+) sessions and (\d+) sub-agents", r.stdout).groups())
    assert top == 60 and f"({top + subs} in all)" in r.stdout


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """Files for the bad-input table: a checkpoint folder with a truncated safetensors shard, a plain file, an
    unrecognised CSV, and a `torch` that cannot be imported (an install without the engine extra)."""
    from safetensors.numpy import save_file

    from tests.engine.conftest import write_tokenizer

    d = tmp_path_factory.mktemp("bad")
    ckpt = d / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 0,
        "eos_token_id": 1, "torch_dtype": "float32"}))
    write_tokenizer(ckpt)
    weights = ckpt / "model.safetensors"
    save_file({"model.embed_tokens.weight": np.zeros((128, 64), dtype=np.float32)}, str(weights))
    weights.write_bytes(weights.read_bytes()[:200])  # cut inside the header's tensor data
    from tests.engine.conftest import write_checkpoint

    write_checkpoint(d / "good", "llama3")
    (d / "notes.txt").write_text("not a model")
    (d / "empty.jsonl").write_text("\n")
    (d / "no_tok").mkdir()
    (d / "no_tok" / "config.json").write_text((ckpt / "config.json").read_text())
    (d / "requests.csv").write_text("time,prompt_tokens,completion_tokens\n0,100,5\n")
    (d / "r.json").mkdir()  # where `report --out {d}/r.html` would write its JSON
    (d / "azure.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,4808,10\n"
                                 "2023-11-16 18:17:04.0319600,3180,8\n")
    from agentkv.workload.formats import canonical
    from agentkv.workload.generator import GeneratorConfig, generate

    canonical.save(generate(GeneratorConfig(sessions=2, seed=0)), str(d / "whole.npz"))
    (d / "cut.npz").write_bytes((d / "whole.npz").read_bytes()[:3000])
    (d / "no_torch").mkdir()
    (d / "no_torch" / "torch.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    return d


ENGINE_HINT = ("this needs agentkv's 'engine' extra (missing module 'torch'): pip install torch==2.13.0 --index-url "
               "https://download.pytorch.org/whl/cpu && pip install -e '.[engine]' in the agentkv clone")


@pytest.mark.parametrize(("args", "blocked", "hint"), [
    (["serve", "--model", "{d}/good"], "torch", "this needs agentkv's 'server' extra (missing module 'torch'): pip "
                                                "install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu "
                                                "&& pip install -e '.[server]' in the agentkv clone"),
    (["replay", "{d}/requests.csv", "--endpoint", "http://127.0.0.1:9", "--out", "{d}/replay"], "httpx",
     "this needs agentkv's 'replay' extra (missing module 'httpx'): pip install -e '.[replay]' in the agentkv clone"),
], ids=["serve", "replay"])
def test_each_command_names_its_own_extra_as_a_clone_installs_it(bad_inputs, tmp_path, args, blocked, hint):
    """`pip install 'agentkv[...]'` resolves, on the public index, to another project: from a clone it is
    `pip install -e '.[extra]'`, and the extra is the command's (replay's is not server's, with its torch)."""
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / f"{blocked}.py").write_text(f"raise ModuleNotFoundError(\"No module named '{blocked}'\", "
                                           f"name='{blocked}')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(missing), os.getcwd()])}
    argv = [a.replace("{d}", str(bad_inputs)) for a in args]
    r = subprocess.run([sys.executable, "-m", "agentkv.cli", *argv], capture_output=True, text=True, timeout=120, env=env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"agentkv: error: {hint}"), r.stderr
    assert ("torch" in lines[0]) == (blocked == "torch")  # replay needs no torch


def test_the_python_api_names_the_missing_extra_as_the_cli_does(bad_inputs):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(bad_inputs / "no_torch"), os.getcwd()])}
    r = subprocess.run([sys.executable, "-c", "from agentkv import LLM"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith(f"ModuleNotFoundError: {ENGINE_HINT}")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in readme  # the same command


BAD_INPUTS = [  # (args, exit code, what the one line must name); {d} is the fixture's folder
    (["generate", "--model", "{d}/ckpt", "--prompt", "hi", "--device", "cpu"], 2, "{d}/ckpt/model.safetensors"),
    (["generate", "--model", "{d}/notes.txt", "--prompt", "hi"], 2, "--model {d}/notes.txt: is a file"),
    (["generate", "--model", "{d}/missing", "--prompt", "hi"], 2, "--model {d}/missing: no such folder"),
    (["generate", "--model", "{d}/good", "--prompt", "hi", "--kv-cache-gb", "0.001", "--kv-tiers", "dram=8"], 2,
     "--kv-tiers dram=8: dram tier of "),
    (["generate", "--model", "{d}/no_tok", "--prompt", "hi"], 2, "--model {d}/no_tok: no tokenizer.json in the"),
    (["generate", "--model", "{d}/ckpt", "--prompt", "hi", "--device", "cuda"], 2, "--device cuda: CUDA is not"),
    (["generate", "--model", "{d}/ckpt", "--prompt", "hi"], 2, ENGINE_HINT),  # with no_torch
    (["report", "--gen-sessions", "0"], 2, "argument --gen-sessions: must be > 0, got 0"),
    (["trace", "generate", "--sessions", "-3", "--out", "{d}/x.npz"], 2, "argument --sessions: must be > 0"),
    (["trace", "stats", "--window", "0"], 2, "argument --window: must be > 0"),
    (["report", "--workers", "0"], 2, "argument --workers: must be > 0"),
    (["report", "--replicas", "two"], 2, "argument --replicas: expected an integer, got 'two'"),
    (["report", "--gen-sessions", "2", "--deployment", "slo_ttft_s=-1"], 2, "--deployment: slo_ttft_s=-1: must be > 0"),
    (["report", "--gen-sessions", "2", "--deployment", "tp=0"], 2, "--deployment: tp=0: must be >= 1"),
    (["report", "--gen-sessions", "2", "--deployment", "tp"], 2, "--deployment: setting 'tp' has no value"),
    (["report", "--gen-sessions", "2", "--deployment", "tp=two"], 2, "--deployment: tp='two' is not an integer"),
    (["report", "--gen-sessions", "2", "--deployment", "gpu=h100"], 2, "--deployment: unknown setting 'gpu'"),
    (["report", "--gen-sessions", "2", "--deployment", "hardware=tpu9"], 2, "unknown hardware 'tpu9'"),
    (["report", "--gen-sessions", "2", "--candidates", "gpt-9"], 2, "--candidates: unknown model 'gpt-9'"),
    (["report", "--gen-sessions", "2", "--over-window", "drop"], 2, "argument --over-window: invalid choice"),
    (["trace", "stats", "{d}/requests.csv"], 2, "{d}/requests.csv:line 1: field 'TIMESTAMP': column missing"),
    (["trace", "stats", "{d}/missing.jsonl"], 2, "{d}/missing.jsonl: no such file"),
    (["trace", "stats", "{d}/empty.jsonl"], 2, "{d}/empty.jsonl:line 1: the file is empty (no trace records)"),
    (["report", "--gen-sessions", "2", "--out", "{d}/notes.txt/r.html"], 2, "--out {d}/notes.txt/r.html: cannot"),
    (["report", "--gen-sessions", "2", "--out", "{d}"], 2, "--out {d}: is a folder"),
    (["trace", "generate", "--sessions", "2", "--out", "{d}/notes.txt/x.npz"], 2, "--out {d}/notes.txt/x.npz"),
    (["cache", "sweep", "--gen-sessions", "2", "--out", "{d}/notes.txt"], 2, "--out {d}/notes.txt: cannot"),
    (["report", "--gen-sessions", "1000000000"], 2, "--gen-sessions 1,000,000,000: a generated trace that large "
                                                    "needs about"),
    (["report", "--concurrency", "1e9", "--gen-sessions", "5"], 2, "--concurrency 1e+09: the trace has 5 sessions"),
    (["trace", "generate", "--sessions", "100000000", "--out", "{d}/x.npz"], 2, "--sessions 100,000,000: a generated"),
    # flags are checked before the trace loads: a missing trace is not what is named
    (["cache", "sweep", "{d}/missing.jsonl", "--capacity", "abc", "--out", "{d}/sw"], 2, "--capacity: bad capacity 'abc'"),
    (["cache", "sweep", "{d}/missing.jsonl", "--policy", "lru,mru", "--out", "{d}/sw"], 2, "--policy: unknown policy 'mru'"),
    (["report", "{d}/missing.jsonl", "--out", "/proc/r.html"], 2, "--out /proc/r.html: cannot write it"),
    (["report", "{d}/missing.jsonl", "--out", "{d}/r.html"], 2, "--out (its JSON beside it) {d}/r.json: is a folder"),
    (["trace", "stats", "{d}/cut.npz"], 2, "{d}/cut.npz: not a whole .npz archive, truncated or damaged"),
    (["report", "{d}/azure.csv"], 2, "{d}/azure.csv: no prefix information (block ids; an Azure CSV has arrivals"),
    (["cache", "sweep", "{d}/azure.csv", "--out", "{d}/sw"], 2, "{d}/azure.csv: no prefix information"),
]


def test_trace_stats_on_a_trace_spanning_no_time_offers_no_rate(tmp_path):
    trace = tmp_path / "instant.jsonl"  # Mooncake lines, both at 0 ms: no span to divide by
    trace.write_text('{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}\n'
                     '{"timestamp": 0, "input_length": 700, "output_length": 5, "hash_ids": [1, 2]}\n')
    r = agentkv("trace", "stats", str(trace), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["duration_s"] == 0 and doc["offered_input_tok_s"] is None and doc["offered_output_tok_s"] is None
    r = agentkv("trace", "stats", str(trace))
    assert "every request at one instant: no rate" in r.stdout


@pytest.mark.parametrize(("args", "code", "named"), BAD_INPUTS, ids=[" ".join(a[:3]) for a, _, _ in BAD_INPUTS])
def test_bad_input_is_answered_in_one_line_by_name(bad_inputs, args, code, named, tmp_path):
    env = dict(os.environ)
    if named == ENGINE_HINT:
        env["PYTHONPATH"] = os.pathsep.join([str(bad_inputs / "no_torch"), os.getcwd()])
    argv = [a.replace("{d}", str(bad_inputs)) for a in args]
    r = subprocess.run([sys.executable, "-m", "agentkv.cli", *argv, *(["--out", str(tmp_path / "r.html")]
                        if argv[0] == "report" and "--out" not in argv else [])], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert named.replace("{d}", str(bad_inputs)) in lines[0]
