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
_ROW_BLOCK = 256  # query rows scored at once: a (rows x keys) block stays cache-friendly
# On CPU the power iterations re-read each head's probabilities 5 times: heads are grouped so
# a group's probabilities stay in the last-level cache (measured ~1.5x faster than all heads
# at once at 1669 tokens). Accelerators take as many heads as the memory budget allows.
_CPU_CACHE_BYTES = 12 << 20


def heads_per_chunk(batch: int, num_heads: int, seq_len: int, max_bytes: int) -> int:
    """How many heads' causal (lower-triangular) float32 score blocks fit in ``max_bytes``."""
    per_head = batch * seq_len * (seq_len + _ROW_BLOCK) // 2 * _BYTES_F32
    return max(1, min(num_heads, max_bytes // max(per_head, 1)))


def _chunk_budget(device: torch.device, max_bytes: int) -> int:
    return min(max_bytes, _CPU_CACHE_BYTES) if device.type == "cpu" else max_bytes


def _causal_probs(q, k, valid, scaling, tau):
    """Row blocks of softmax(causal(QK^T * scaling / tau)) over the valid keys.

    q, k: (B, c, N, d) float32. Returns [(rows, probs (B, c, len(rows), rows.stop))]: only the
    keys a block can see are computed (the causal upper triangle is never materialized).
    Masking: keys before the block only need the padding mask (skipped when nothing is
    invalid); the block's own square gets the causal mask. Every row keeps its diagonal, so no
    row is all -inf (no NaN); invalid queries start with mass 0 and no valid query looks at
    them, so their rows never carry any share.
    """
    n = q.shape[-2]
    q = q * (scaling / tau)  # divide by tau before masking (finfo.min / tau would overflow)
    all_valid = bool(valid.all())
    blocks = []
    for i0 in range(0, n, _ROW_BLOCK):
        i1 = min(n, i0 + _ROW_BLOCK)
        logits = torch.matmul(q[:, :, i0:i1], k[:, :, :i1].transpose(-1, -2))
        if not all_valid and i0:
            logits[..., :i0].masked_fill_(~valid[:, None, None, :i0], float("-inf"))
        pos = torch.arange(i0, i1, device=q.device)
        allowed = pos[None, :] <= pos[:, None]  # (rows, rows) causal
        if not all_valid:
            allowed = allowed & valid[:, None, None, i0:i1]
        allowed = allowed | torch.eye(i1 - i0, dtype=torch.bool, device=q.device)
        logits[..., i0:i1].masked_fill_(~allowed, float("-inf"))
        blocks.append((slice(i0, i1), torch.softmax(logits, dim=-1)))
    return blocks


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
    chunk = heads_per_chunk(b, nh, n, _chunk_budget(query.device, max_bytes))
    for h0 in range(0, nh, chunk):
        heads = torch.arange(h0, min(nh, h0 + chunk), device=query.device)
        blocks = _causal_probs(
            query[:, heads].to(torch.float32), key[:, heads // group].to(torch.float32), valid, scaling, tau
        )
        d = start[:, None, None, :].expand(b, len(heads), 1, n).contiguous()
        for _ in range(iters):
            # d <- d M: each token passes its share to the tokens it attends to.
            nxt = torch.zeros_like(d)
            for rows, probs in blocks:
                nxt[..., : rows.stop] += torch.matmul(d[..., rows], probs)
            d = nxt
        sum_sq += d.squeeze(-2).square().sum(dim=1)
        del blocks
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
    chunk = heads_per_chunk(b, nh, n, _chunk_budget(query.device, max_bytes))
    for h0 in range(0, nh, chunk):
        heads = torch.arange(h0, min(nh, h0 + chunk), device=query.device)
        blocks = _causal_probs(
            query[:, heads].to(torch.float32), key[:, heads // group].to(torch.float32), valid, scaling, 1.0
        )
        for rows, probs in blocks:
            # only present queries vote
            total[:, : rows.stop] += (probs * valid[:, None, rows, None]).sum(dim=(1, 2))
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


def last_token_attention(query: torch.Tensor, key: torch.Tensor, valid: torch.Tensor, scaling: float) -> torch.Tensor:
    """Attention the last present token pays every token, mean over heads: (B, N) float32.

    The score of FastV and PyramidDrop (their "last token" / "last instruction token": at
    prefill both are the prompt's last token). One query row per sample against the layer's
    post-RoPE keys, softmax over the present keys (all of them precede the last token), in
    float32; grouped-query heads use their group's keys without expanding them.
    """
    b, nh, n, d = query.shape
    nkv = key.shape[1]
    if nh % nkv:
        raise ValueError(f"query heads {nh} not a multiple of key/value heads {nkv}")
    valid = valid.to(torch.bool)
    last = (n - 1) - valid.flip(-1).to(torch.int8).argmax(dim=-1)  # (B,) last present slot
    rows = torch.arange(b, device=query.device)
    q = query[rows, :, last].to(torch.float32).reshape(b, nkv, nh // nkv, 1, d)
    k = key.to(torch.float32).unsqueeze(2)  # (B, nkv, 1, N, d)
    logits = torch.matmul(q, k.transpose(-1, -2)).reshape(b, nh, n) * scaling
    logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1).mean(dim=1) * valid


_HASH_MOD = (1 << 31) - 1  # a prime; every intermediate product stays far below 2**63


def random_scores(visual_index: torch.Tensor, seed: int, layer: int) -> torch.Tensor:
    """Seeded pseudo-random scores in [0, 1], a pure function of (seed, layer, visual index).

    visual_index: integer tensor, each token's index among its sample's visual tokens (any
    value elsewhere). A hash rather than a generator, so a token gets the same score alone or
    in a batch, under removal or masking, on any device.
    """
    x = (visual_index.to(torch.int64) * 1_000_003 + seed * 7_919 + layer * 104_729 + 12_345) % _HASH_MOD
    for _ in range(3):
        x = (x * 48_271) % _HASH_MOD  # Park-Miller step: a permutation of 1..M-1
        x = x ^ (x >> 13)
    return x.to(torch.float64).div(_HASH_MOD).to(torch.float32)
