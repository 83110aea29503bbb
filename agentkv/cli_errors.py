"""How the `agentkv` command answers bad input: one line on stderr naming the flag, file or field, exit 2;
runtime failures exit 1; never a traceback. Also the checks a command runs before it starts heavy work."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import threading
from collections import Counter
from importlib import metadata

USER_ERRORS = (ValueError, KeyError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


class UsageError(Exception):
    """Bad input, already phrased for the user (names the flag, file or field)."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive(kind: type) -> callable:  # type: ignore[valid-type]
    """An argparse `type` accepting only numbers > 0 of `kind` (int or float)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") \
                from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _requires() -> list[tuple[str, str, str]]:
    """agentkv's optional requirements: (distribution, extras it names in brackets, the extra it belongs to)."""
    try:
        requires = metadata.requires("agentkv") or []
    except metadata.PackageNotFoundError:
        return []
    out = []
    for req in requires:
        dist = re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")
        nested = re.search(r"\[([^\]]*)\]", req.split(";")[0])
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", req)
        if extra:
            out.append((dist, nested.group(1) if nested else "", extra.group(1)))
    return out


def _provides(extra: str, name: str, requires: list[tuple[str, str, str]]) -> bool:
    """Whether installing `extra` installs the distribution `name` (through the extras it includes too)."""
    for dist, nested, owner in requires:
        if owner != extra:
            continue
        if dist == name or (dist == "agentkv" and any(_provides(x.strip(), name, requires) for x in nested.split(","))):
            return True
    return False


def missing_extra(e: ModuleNotFoundError, needs: str | None = None) -> str | None:
    """The optional extra of agentkv to install for the missing module: `needs` (the command's own extra) when it
    provides the module, else the smallest extra that does; None when none does."""
    name = (e.name or "").split(".")[0].lower().replace("_", "-")
    requires = _requires()
    size = Counter(owner for _, _, owner in requires)
    others = sorted({owner for _, _, owner in requires} - {"all", "test", needs}, key=lambda x: (size[x], x))
    return next((x for x in [*([needs] if needs else []), *others] if _provides(x, name, requires)), None)


TORCH_EXTRAS = ("engine", "server")  # extras whose install pulls torch: PyPI's default Linux wheel is a CUDA build
CPU_TORCH = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"  # the README's, for CPUs


def pip_extra(extra: str) -> str:
    """The install command for an extra. From the clone (the package on the public index named agentkv is
    another project), so editable, as the README installs it."""
    return f"pip install -e '.[{extra}]' in the agentkv clone"


def install_hint(e: ModuleNotFoundError, needs: str | None = None) -> str | None:
    """What to install for a missing module, in the words both the CLI and the Python API use; None when no
    extra of agentkv provides it. `needs`: the extra the command itself needs (`serve`: server; `replay`:
    replay), named when it provides the module. Extras that pull torch name the CPU build first, so a CPU machine
    stays on it."""
    extra = missing_extra(e, needs)
    if extra is None:
        return None
    install = pip_extra(extra)
    if extra in TORCH_EXTRAS:
        install = f"{CPU_TORCH} && {install}; with a GPU, your CUDA build of torch instead of the first command"
    return f"this needs agentkv's '{extra}' extra (missing module '{e.name}'): {install}"


def check_model_dir(path: str, flag: str = "--model") -> None:
    if not os.path.exists(path):
        raise UsageError(f"{flag} {path}: no such folder (give a Hugging Face checkpoint folder)")
    if not os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a file; give the checkpoint folder that holds config.json, "
                         "the safetensors and tokenizer.json")


def check_output(path: str, flag: str = "--out", folder: bool = False) -> None:
    """Before any work: create the output folder (`path` itself, or the folder a file goes in) and make sure a
    file can be written there (tried, not guessed from permission bits: root, read-only mounts), or say why not."""
    if not folder and os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a folder; give a file path")
    where = path if folder else (os.path.dirname(os.path.abspath(path)))
    try:
        os.makedirs(where, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot create the folder {where} ({e.strerror})") from None
    try:
        if folder:
            tempfile.TemporaryFile(dir=where).close()
        else:
            existed = os.path.exists(path)
            open(path, "a").close()
            if not existed:
                os.remove(path)
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write {'in ' if folder else ''}{where if folder else 'it'} "
                         f"({e.strerror})") from None


def engine_error(e: ValueError, kv_tiers: str | None) -> Exception:
    """The engine's error for the flags that caused it: a tier size only the loaded model can check (smaller
    than one of its pages) names --kv-tiers and its units; anything else is passed on as it was."""
    if not str(e).startswith("kv_tiers"):
        return e
    return UsageError(f"--kv-tiers {kv_tiers}: {str(e).removeprefix('kv_tiers: ')} (sizes are tokens, e.g. 64k, "
                      "or bytes, e.g. 8GiB)")


def check_device(device: str | None, flag: str = "--device") -> None:
    if device and device.split(":")[0] == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"{flag} {device}: CUDA is not available here (torch {torch.__version__}, "
                             f"{'a CPU-only build' if torch.version.cuda is None else 'no CUDA device visible'}); "
                             "use --device cpu")


def one_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(text.split()) or type(e).__name__


class Stopped(BaseException):
    """SIGTERM or SIGHUP, raised where the program is, so the `with` blocks holding workers and files unwind."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum: int, frame: object) -> None:
    raise Stopped(signum)


def run_guarded(fn, prog: str = "agentkv") -> int:
    """Run `fn()`; turn every failure into one line on stderr (exit 2 for bad input, 1 for the rest). SIGTERM and
    SIGHUP unwind like Ctrl-C (worker processes are ended on the way out), then end the process by that signal."""
    caught = (signal.SIGTERM, signal.SIGHUP) if threading.current_thread() is threading.main_thread() else ()
    before = {s: signal.signal(s, _stop) for s in caught}
    try:
        return int(fn() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Stopped as e:
        print(f"{prog}: stopped by {e}", file=sys.stderr)
        sys.stderr.flush()
        signal.signal(e.signum, signal.SIG_DFL)
        os.kill(os.getpid(), e.signum)  # a supervisor sees the signal it sent (status 128 + signum)
        return 128 + e.signum
    except ModuleNotFoundError as e:
        hint = install_hint(e)
        print(f"{prog}: error: {hint or one_line(e)}", file=sys.stderr)
        return 1 if hint is None else 2
    except (UsageError, *USER_ERRORS) as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        if os.environ.get("AGENTKV_DEBUG"):
            raise
        print(f"{prog}: error: {type(e).__name__}: {one_line(e)} (set AGENTKV_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
