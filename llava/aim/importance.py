"""Stage 2 of AIM: token importance from a layer's attention, and survivor selection.

Pure torch. ``pagerank_importance`` is the paper's score (METHOD.md): causal attention of
the tokens present, sharpened with temperature tau, used as a transition matrix for a few
power-iteration steps from a uniform start; root-mean-square over heads. Computed in float32
over the *present* tokens only (``valid``): padding, dead slots and tokens pruned earlier
neither cast nor receive a share. Heads are processed in chunks so the extra memory stays
under a budget.
"""

from __future__ import annotations

import torch

_BYTES_F32 = 4
# Live (B, heads, N, N) float32 buffers per head chunk: the logits and their softmax.
_BUFFERS_PER_HEAD = 2


def heads_per_chunk(batch: int, num_heads: int, seq_len: int, max_bytes: int) -> int:
    """How many heads fit in ``max_bytes`` of (N, N) float32 score buffers (at least one)."""
    per_head = batch * seq_len * seq_len * _BYTES_F32 * _BUFFERS_PER_HEAD
    return max(1, min(num_heads, max_bytes // max(per_head, 1)))


def _causal_scores(q, k, valid, scaling, tau):
    """softmax(causal(QK^T * scaling / tau)) restricted to valid keys, rows of invalid queries zero.

    q: (B, c, N, d) float32, k: (B, c, N, d) float32, valid: (B, N) bool.
    """
    n = q.shape[-2]
    logits = torch.matmul(q, k.transpose(-1, -2)).mul_(scaling / tau)  # divide by tau, THEN mask
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril_()
    allowed = causal & valid[:, None, None, :]
    # Every row keeps its diagonal so no row is all -inf (no NaN); invalid rows are zeroed below.
    allowed = allowed | torch.eye(n, dtype=torch.bool, device=q.device)
    logits.masked_fill_(~allowed, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return probs.mul_(valid[:, None, :, None])


def pagerank_importance(
    query: torch.Tensor,
    key: torch.Tensor,
    valid: torch.Tensor,
    scaling: float,
    tau: float = 0.1,
    iters: int = 5,
    max_bytes: int = 1 << 30,
) -> torch.Tensor:
    """PageRank-style importance of every token, shape (B, N), float32; zero where not valid.

    query: (B, nh, N, d) post-RoPE queries; key: (B, nkv, N, d) post-RoPE keys, nh a multiple
    of nkv (grouped-query heads share their group's keys); valid: (B, N) bool, the tokens
    present at this layer.
    """
    b, nh, n, _ = query.shape
    nkv = key.shape[1]
    if key.shape[-2] != n:
        raise ValueError(f"importance needs keys for exactly the queried tokens: {key.shape[-2]} != {n}")
    if nh % nkv:
        raise ValueError(f"query heads {nh} not a multiple of key/value heads {nkv}")
    group = nh // nkv
    valid = valid.to(torch.bool)
    present = valid.sum(dim=-1, keepdim=True).clamp_min(1).to(torch.float32)
    start = valid.to(torch.float32) / present  # uniform 1/N over the present tokens
    sum_sq = torch.zeros(b, n, dtype=torch.float32, device=query.device)
    chunk = heads_per_chunk(b, nh, n, max_bytes)
    for h0 in range(0, nh, chunk):
        heads = torch.arange(h0, min(nh, h0 + chunk), device=query.device)
        q = query[:, heads].to(torch.float32)
        k = key[:, heads // group].to(torch.float32)
        probs = _causal_scores(q, k, valid, scaling, tau)
        d = start[:, None, None, :].expand(b, len(heads), 1, n)
        for _ in range(iters):
            d = torch.matmul(d, probs)  # d <- d M: each token passes its share to what it attends
        sum_sq += d.squeeze(-2).square().sum(dim=1)
        del probs
    return (sum_sq / nh).sqrt()


def attention_importance(
    query: torch.Tensor,
    key: torch.Tensor,
    valid: torch.Tensor,
    scaling: float,
    max_bytes: int = 1 << 30,
) -> torch.Tensor:
    """Cheaper score, NOT the paper's: mean causal attention (tau 1) each token receives from
    the present queries, averaged over heads. One softmax, no power iterations."""
    b, nh, n, _ = query.shape
    group = nh // key.shape[1]
    valid = valid.to(torch.bool)
    total = torch.zeros(b, n, dtype=torch.float32, device=query.device)
    chunk = heads_per_chunk(b, nh, n, max_bytes)
    for h0 in range(0, nh, chunk):
        heads = torch.arange(h0, min(nh, h0 + chunk), device=query.device)
        probs = _causal_scores(
            query[:, heads].to(torch.float32), key[:, heads // group].to(torch.float32), valid, scaling, 1.0
        )
        total += probs.sum(dim=(1, 2))
    present = valid.sum(dim=-1, keepdim=True).clamp_min(1).to(torch.float32)
    return total / (nh * present) * valid


def select_survivors(
    scores: torch.Tensor, visual: torch.Tensor, alive: torch.Tensor, keep_visual: torch.Tensor
) -> torch.Tensor:
    """Which present tokens go on to the next layer, as a (B, N) bool mask.

    Every present non-visual token survives. Among the present visual tokens of sample b the
    ``keep_visual[b]`` highest-scoring survive; ties go to the lower index.
    """
    if torch.isnan(scores).any():
        raise FloatingPointError("importance scores contain NaN; refusing a NaN-driven selection")
    candidates = visual & alive
    ranked_scores = scores.masked_fill(~candidates, float("-inf"))
    order = torch.sort(ranked_scores, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    chosen = candidates & (rank < keep_visual.to(rank.device)[:, None])
    return (alive & ~visual) | chosen


def compact_left(keep: torch.Tensor):
    """Indices that gather the kept slots of each row, in order, right-aligned.

    Rows with fewer kept slots are left-padded with dead slots (like left padding), so every
    row keeps its causal order. Returns (index (B, M), alive (B, M)) with M the largest count.
    """
    width = int(keep.sum(dim=-1).max().item())
    order = torch.sort(keep.to(torch.int8), dim=-1, stable=True).indices  # dropped first, kept last
    index = order[:, order.shape[1] - width :]
    return index, keep.gather(1, index)
