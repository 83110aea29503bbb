"""The answer on top of the report: what to deploy for this traffic, against the baseline, the lever that buys
most, and what is modelled rather than measured — in a few sentences with numbers."""

from __future__ import annotations

from itertools import pairwise

from agentkv.report.assemble import Report, RungOutcome
from agentkv.report.ladder import DEFAULT_CHUNK, quantile
from agentkv.report.load import crossings
from agentkv.report.slo import slo_achieved
from agentkv.report.views import plural


def headline(rep: Report) -> list[str]:
    return [*_window(rep), _deploy(rep) + _ramp(rep), *_break_even(rep), _baseline(rep),
            best_lever(rep.outcomes, rep.spec.tp), _modelled(rep)]


def _break_even(rep: Report) -> list[str]:
    """Against each API of the same model: the load where self-hosting starts to win, and what to run each side."""
    out = []
    for x in crossings(rep.curves, rep.model_apis):
        api = f"{x.api.name} (${x.api.usd_per_mtok:.3f}/Mtok on this traffic)"
        if x.sessions is None:
            floor = f"${x.floor:.3f}" if x.floor is not None else "more"
            out.append(f"Against {api}: self-hosting {rep.spec.model} never breaks even on {rep.hardware} — even "
                       f"full replicas with every lever cost {floor}/Mtok; use the API at any load.")
            continue
        out.append(f"Against {api}: break-even at {x.sessions:.3g} concurrent sessions per replica of "
                   f"{plural(rep.spec.tp, 'GPU')} — below ~{x.sessions:.3g} sessions use {x.api.name}; above, "
                   f"self-host with levers through {x.lever.lstrip('+')} (full replicas: ${x.floor:.3f}/Mtok).")
    return out


def _window(rep: Report) -> list[str]:
    """First: what the traffic asks of a model's window, which model runs and why, and (with candidates) which
    model serves it cheapest."""
    lines = []
    if rep.window.over:
        lines.append(f"Context window: {rep.window.describe()}.")
    lines.append(f"Model: {rep.model_choice or rep.spec.model}.")
    priced = [c for c in rep.candidates if c.sized and c.sized.cost]
    if priced:
        best = min(priced, key=lambda c: c.sized.cost.usd_per_mtok_blended)  # type: ignore[union-attr]
        cost = best.sized.cost  # type: ignore[union-attr]
        inside = 1 - best.fit.over_share
        text = (f"Model choice: of {len(rep.candidates)} candidates, {best.model} serves this traffic cheapest "
                f"with every lever on: {_gpus(cost.gpus)}, ${cost.usd_per_mtok_blended:.3f} per million tokens, "
                f"{inside:.0%} of requests inside its {best.window:,}-token window")
        dearest = max(priced, key=lambda c: c.sized.cost.usd_per_mtok_blended)  # type: ignore[union-attr]
        if dearest is not best:
            ratio = dearest.sized.cost.usd_per_mtok_blended / cost.usd_per_mtok_blended  # type: ignore[union-attr]
            text += f"; {dearest.model} costs {ratio:.1f}× as much"
        missed = [c.model for c in rep.candidates if not (c.sized and c.sized.cost)]
        if missed:
            text += f"; {', '.join(missed)} meet the SLO at no size tried (or do not fit on 8 GPUs)"
        lines.append(text + "." + _ladder_model(rep, best.model))
    return lines


def _ladder_model(rep: Report, cheapest: str) -> str:
    """Where the model view's cheapest is not the model the levers below run on, say so and why, so the fleet
    that follows does not read as the model view's answer."""
    if cheapest == rep.spec.model:
        return ""
    named = rep.model_choice.startswith(f"{rep.spec.model}, as given")
    chosen = "named with --deployment" if named else "the default, chosen before the candidates are sized"
    return (f" The fleet and levers below are for {rep.spec.model} ({chosen}), not for {cheapest}: for "
            f"{cheapest}'s, run the report with --deployment model={cheapest}.")


def _ramp(rep: Report) -> str:
    """Placed sessions start warm and hold the offered concurrency; on a trace's own clock, say if it held less."""
    mean, peak = rep.open_sessions
    if mean >= 0.9 * rep.offered_sessions:
        return ""
    return (f" This trace averages only {mean:.3g} sessions open at once in the billed window ({peak} at peak): "
            "the SLO was checked at a lighter load than offered, so the fleet is a lower bound for steady traffic.")


def _deploy(rep: Report) -> str:
    top, spec = rep.outcomes[-1], rep.spec
    load = f"{rep.offered_sessions:.3g} concurrent agent sessions"
    if top.sized.cost is None:
        return (f"No combination of levers meets {spec.slo} for {load}: with all of them on, "
                f"{top.sized.reason}.")
    c = top.sized.cost
    assert top.sized.result is not None
    mode = f" ({top.spec.fleet_words(top.sized.replicas or 1)})" if top.spec else ""
    text = (f"Deploy {c.gpus} × {rep.hardware}{mode} for {load} of {spec.model}, with all levers on: "
            f"{slo_achieved(top.sized.result, spec)} against the SLO ({spec.slo}), "
            f"${c.usd_per_mtok_blended:.3f} per million tokens (all tokens; the GPUs are busy "
            f"{c.utilisation:.0%} of the time, idle capacity ${c.usd_per_mtok_idle:.3f} of it).")
    if top.sized.binding:
        text += (f" What sets the size: one replica fewer misses {'; '.join(top.sized.binding)}.")
    if top.spec and (top.spec.prefill_share or top.spec.max_batched_tokens != DEFAULT_CHUNK):
        how = "prefill and decode on separate pools" if top.spec.prefill_share else \
            f"{top.spec.max_batched_tokens}-token prefill chunks"
        text += (f" It runs {how}: with the engines' default {DEFAULT_CHUNK}-token chunks beside the decodes, "
                 "output speed needs more GPUs for this SLO, or no fleet meets it.")
    first = next(o for o in rep.outcomes if o.sized.cost and o.sized.cost.gpus == c.gpus)
    if first is not top:
        text += (f" From the {first.rung.name.lstrip('+')} on, {_gpus(c.gpus)} already "
                 f"{'suffices' if c.gpus == 1 else 'suffice'}; the levers after it "
                 "add sessions per GPU (see capacity), not fewer GPUs, at this load.")
    return text


def _baseline(rep: Report) -> str:
    base, spec = rep.outcomes[0], rep.spec
    same = ""
    if base.fleet_run is not None:
        same = (f" On the same {_gpus(rep.fleet_gpus)} its p{spec.slo_quantile:g} TTFT is "
                f"{quantile(base.fleet_run.ttft, spec.slo_quantile):,.0f} s.")
    if base.sized.cost is None:
        return f"The baseline (no prefix cache, bf16 KV, FlashAttention-2-class attention) meets the SLO at no fleet size: " \
               f"{base.sized.reason}.{same}"
    c, top = base.sized.cost, rep.outcomes[-1].sized.cost
    vs = f" ({c.gpus / top.gpus:.1f}× the GPUs)" if top else ""
    return f"The baseline needs {_gpus(c.gpus)} at ${c.usd_per_mtok_blended:.3f} per million tokens{vs}.{same}"


def _gpus(n: int) -> str:
    return plural(n, "GPU")


def best_lever(outcomes: list[RungOutcome], tp: int) -> str:
    """The lever with the largest step: making the SLO reachable at all beats cutting GPUs, which beats raising
    sessions per GPU (whole GPUs are coarse at small loads)."""
    best = None
    for prev, cur in pairwise(outcomes):
        a, b = prev.sized.cost, cur.sized.cost
        ca, cb = prev.capacity.sessions_per_replica / tp, cur.capacity.sessions_per_replica / tp
        if b is None:
            continue
        gain = (float("inf") if a is None else a.gpus / b.gpus, cb / ca if ca else float("inf") if cb else 1.0)
        if best is None or gain > best[0]:
            best = (gain, prev, cur)
    if best is None:
        return "No lever brings any fleet size within the SLO."
    (gpu_gain, session_gain), prev, cur = best
    if gpu_gain <= 1 and session_gain <= 1:  # every lever leaves both where they were: say so, not "2 → 2"
        return ("No lever cuts the GPUs the SLO needs or raises the sessions one GPU serves within it at this "
                "load.")
    name, b = cur.rung.name.lstrip("+"), cur.sized.cost
    assert b is not None
    if gpu_gain == float("inf"):
        return (f"The lever that buys most is {name}: without it no fleet meets the SLO; with it "
                f"{_gpus(b.gpus)} do.")
    a = prev.sized.cost
    assert a is not None
    if gpu_gain > 1:
        return (f"The lever that buys most is {name}: {a.gpus} → {_gpus(b.gpus)}, ${a.usd_per_mtok_blended:.3f} → "
                f"${b.usd_per_mtok_blended:.3f} per million tokens.")
    ca, cb = prev.capacity.sessions_per_replica / tp, cur.capacity.sessions_per_replica / tp
    return (f"The lever that buys most is {name}: one GPU serves {ca:.3g} → {cb:.3g} concurrent sessions within "
            "the SLO.")


def _modelled(rep: Report) -> str:
    return (f"Modelled, not measured: latency and cost come from agentkv's simulator and step-cost model of "
            f"{rep.hardware} at ${rep.usd_per_gpu_hour:g}/GPU-hour; KV quantization's effect on accuracy is "
            "not assessed.")
