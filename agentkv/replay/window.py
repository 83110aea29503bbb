"""Fit the replay's requests to the served context window before sending any: a prompt over the server's
`max_model_len` is refused every time, so a run that finds out per request measures nothing.

`scale` (the default) lowers --token-scale until the longest request fits, and where even one token per trace
block is too long (a 114k-token coding-agent prompt on a 512-token model) also cuts what is still over;
`cap` keeps --token-scale and cuts each request over the window (its prompt keeps its start, where the reuse
is); `stop` refuses the run, saying by how much the requests exceed the window.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from agentkv.cli_errors import UsageError
from agentkv.replay.synth import Synth

MODES = ("scale", "cap", "stop")


def fit_window(synth: Synth, requests: np.ndarray, max_model_len: int, overhead: int, mode: str) -> str:
    """Set `synth`'s token scale and window so `requests` fit; returns what was done, in words ("" if nothing)."""
    window = max_model_len - overhead
    need = _longest(synth, requests)
    if need <= window:
        return ""
    prompt, reply = synth.sizes(requests)
    over = int((prompt + reply > window).sum())
    what = (f"{over:,} of {len(requests):,} requests exceed the served window of {window:,} tokens (max_model_len "
            f"{max_model_len:,} less the {overhead} the server adds); the longest needs {need:,}, "
            f"{need / window:.1f}× the window")
    if mode == "stop":
        raise UsageError(f"--fit-window stop: {what}; lower --token-scale or use --fit-window scale or cap")
    if mode == "scale":
        given = synth.token_scale
        synth.token_scale = _largest_scale_that_fits(synth, requests, window)
        prompt, reply = synth.sizes(requests)
        still = int((prompt + reply > window).sum())
        if not still:
            return f"{what}: --token-scale {given:g} lowered to {synth.token_scale:.4g} to fit"
        synth.window = window
        return (f"{what}: --token-scale {given:g} lowered to {synth.token_scale:.4g} (one token per trace block) "
                f"and the {still:,} still over cut to the window")
    synth.window = window
    return f"{what}: those cut to the window (prompts keep their start)"


def _longest(synth: Synth, requests: np.ndarray, scale: float | None = None) -> int:
    prompt, reply = (synth if scale is None else replace(synth, token_scale=scale)).sizes(requests)
    return int((prompt + reply).max())


def _largest_scale_that_fits(synth: Synth, requests: np.ndarray, window: int) -> float:
    """Bisection on the token scale (request sizes only grow with it), down to one token per block."""
    t = synth.trace
    low = 1 / t.block_size if t.has_block_ids else 1 / max(int(t.input_tokens[requests].max()), 1)
    high = synth.token_scale
    if _longest(synth, requests, low) > window:
        return low
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if _longest(synth, requests, mid) <= window else (low, mid)
    return low
