"""The batched sampler: greedy rows, truncation by top-k / top-p per row, exact sampling frequencies, and
seeded rows that do not depend on their batch neighbours."""

from __future__ import annotations

import torch

from agentkv.engine.sampler import sample, truncate
from agentkv.engine.sequence import SamplingParams


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_greedy_and_degenerate_truncations_pick_the_argmax():
    logits = torch.randn(5, 50, generator=seeded(0))
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0.8, top_k=1),
              SamplingParams(temperature=1.5, top_p=1e-6), SamplingParams(temperature=0),
              SamplingParams(temperature=2.0, top_k=1, top_p=0.5)]
    assert sample(logits, params, [None] * 5) == logits.argmax(-1).tolist()


def test_truncation_keeps_each_rows_own_set():
    x = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.25, 0.35, 0.3]]))
    kept = torch.isfinite(truncate(x, [2, 0, 3], [1.0, 0.6, 0.3]))
    assert kept.tolist() == [[True, True, False, False],  # top-2
                             [False, False, True, True],  # 0.4 + 0.3 reaches 0.6
                             [False, False, True, False]]  # 0.35 alone reaches 0.3


def test_frequencies_match_the_softmax_at_temperature():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n, t = 20000, 0.7
    logits = (probs.log() * t).repeat(n, 1)  # at temperature t these logits give back `probs`
    tokens = torch.tensor(sample(logits, [SamplingParams(temperature=t)] * n, [None] * n))
    freq = torch.bincount(tokens, minlength=4).float() / n
    assert torch.allclose(freq, probs, atol=0.015), freq


def test_top_p_frequencies_renormalize_over_the_kept_set():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 20000
    tokens = torch.tensor(sample(probs.log().repeat(n, 1), [SamplingParams(top_p=0.75)] * n, [None] * n))
    freq = torch.bincount(tokens, minlength=4).float() / n
    assert freq[2:].sum() == 0 and abs(freq[0] - 0.5 / 0.8) < 0.015


def test_a_seeded_row_does_not_depend_on_its_neighbours():
    logits = torch.randn(3, 100, generator=seeded(1))
    p = SamplingParams(temperature=1.0, seed=7)
    alone = [sample(logits[1:2], [p], [seeded(7)])[0] for _ in range(2)]
    batched = sample(logits, [SamplingParams(), p, SamplingParams()], [None, seeded(7), None])[1]
    assert alone[0] == alone[1] == batched


def test_logit_bias_moves_only_its_own_row_before_truncation():
    logits = torch.zeros(3, 8)
    logits[:, 0] = 5.0  # every row's argmax is token 0
    params = [SamplingParams(temperature=0, logit_bias=[(3, 10.0)]), SamplingParams(temperature=0),
              SamplingParams(temperature=1.0, top_k=1, logit_bias=[(0, -100.0), (6, 2.0)])]
    assert sample(logits.clone(), params, [None] * 3) == [3, 0, 6]  # top_k=1 keeps the biased best, not token 0
