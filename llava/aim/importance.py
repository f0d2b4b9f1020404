"""Stage 2 of AIM: token importance from a layer's attention, and survivor selection.

Pure torch. ``pagerank_importance`` is the paper's score (docs/method.md): causal attention of
the tokens present, sharpened with temperature tau, used as a transition matrix for a few
power-iteration steps from a uniform start; root-mean-square over heads. Computed in float32
over the *present* tokens only (``valid``): padding, dead slots and tokens pruned earlier
neither cast nor receive a share. Probabilities are computed in blocks of query rows (and
of heads, if needed) so the extra memory stays under a budget.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

_BYTES_F32 = 4
_ROW_BLOCK = 256  # attention_importance: query rows scored at once
# attention_importance on CPU: heads grouped so a group's probabilities stay in the last-level
# cache (measured ~1.5x faster than all heads at once at 1669 tokens).
_CPU_CACHE_BYTES = 12 << 20
# pagerank_importance blocks (see pagerank_blocking). CPU: 8 MiB of probabilities, 32-256 rows,
# measured on a 2-core EPYC (32 MiB L3) with 4-32 MiB. Accelerators: untuned (no GPU measured
# yet); larger blocks mean fewer kernel launches.
_CPU_BLOCK_BYTES = 8 << 20
_ACCEL_BLOCK_BYTES = 256 << 20
_MIN_ROWS, _MAX_ROWS = 32, 256


def heads_per_chunk(batch: int, num_heads: int, seq_len: int, max_bytes: int) -> int:
    """How many heads' causal (lower-triangular) float32 score blocks fit in ``max_bytes``."""
    per_head = batch * seq_len * (seq_len + _ROW_BLOCK) // 2 * _BYTES_F32
    return max(1, min(num_heads, max_bytes // max(per_head, 1)))


def _chunk_budget(device: torch.device, max_bytes: int) -> int:
    return min(max_bytes, _CPU_CACHE_BYTES) if device.type == "cpu" else max_bytes


def _all_present(valid: torch.Tensor, all_valid: Optional[bool]) -> bool:
    """Whether every slot is valid: the caller's host-side answer when it has one (reading the
    device here would stall the launch queue at every pruning layer), else read from ``valid``."""
    return bool(valid.all()) if all_valid is None else all_valid


def _causal_probs(q, k, valid, scaling, tau, all_valid: Optional[bool] = None):
    """Row blocks of softmax(causal(QK^T * scaling / tau)) over the valid keys.

    q, k: (B, c, N, d) float32. Returns [(rows, probs (B, c, len(rows), rows.stop))]: only the
    keys a block can see are computed (the causal upper triangle is never materialized).
    """
    n = q.shape[-2]
    q = q * (scaling / tau)  # divide by tau before masking (finfo.min / tau would overflow)
    all_valid = _all_present(valid, all_valid)
    causal = torch.ones(_ROW_BLOCK, _ROW_BLOCK, dtype=torch.bool, device=q.device).tril_()
    blocks = []
    for i0 in range(0, n, _ROW_BLOCK):
        i1 = min(n, i0 + _ROW_BLOCK)
        logits = torch.matmul(q[:, :, i0:i1], k[:, :, :i1].transpose(-1, -2))
        _mask_block(logits, valid, all_valid, i0, causal[: i1 - i0, : i1 - i0])
        blocks.append((slice(i0, i1), torch.softmax(logits, dim=-1)))
    return blocks


def pagerank_blocking(
    batch: int, kv_heads: int, group: int, seq_len: int, device: torch.device, max_bytes: int,
    row_block: Optional[int] = None,
) -> Tuple[int, int]:
    """(key/value heads per chunk, query rows per block) for ``pagerank_importance``.

    A block holds the float32 probabilities of ``rows`` query rows of every head of the chunk
    against up to ``seq_len`` keys; it is written by QK^T, normalized, then read by the power
    steps, so on CPU blocks are sized to stay in the last-level cache; accelerators take larger
    blocks (fewer kernel launches). ``max_bytes`` is a hard cap: above it the heads are split by
    key/value group, then the rows shrink, down to one.
    """
    per_row = batch * group * max(seq_len, 1) * _BYTES_F32  # one query row of one kv group
    if row_block is None:
        soft = min(max_bytes, _CPU_BLOCK_BYTES if device.type == "cpu" else _ACCEL_BLOCK_BYTES)
        rows = soft // (per_row * kv_heads) // 16 * 16  # whole 16-row tiles: measured faster
        rows = max(_MIN_ROWS, min(_MAX_ROWS, rows))
    else:
        rows = max(1, int(row_block))
    rows = min(rows, max(seq_len, 1))
    chunk = max(1, min(kv_heads, max_bytes // (per_row * rows)))
    if chunk * per_row * rows > max_bytes:  # one kv group of ``rows`` rows is still too big
        rows = max(1, min(rows, max_bytes // per_row))
    return chunk, rows


def pagerank_importance(
    query: torch.Tensor,
    key: torch.Tensor,
    valid: torch.Tensor,
    scaling: float,
    tau: float = 0.1,
    pagerank_iters: int = 5,
    max_bytes: int = 1 << 30,
    row_block: Optional[int] = None,
    all_valid: Optional[bool] = None,
    voters: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """PageRank-style importance of every token, shape (B, N), float32; zero where not valid.

    query: (B, nh, N, d) post-RoPE queries; key: (B, nkv, N, d) post-RoPE keys, nh a multiple
    of nkv (grouped-query heads share their group's keys); valid: (B, N) bool, the tokens
    present at this layer. ``row_block`` overrides the query rows per block (tests, tuning).
    ``all_valid``: whether every slot is valid, when the caller knows it (no device read).
    ``voters``: (B, N) bool, the valid tokens the walk starts from (default: all valid). Causal
    attention means a prefix of voters scores exactly as if the later tokens were absent.

    The transition matrix M is never stored whole. With causal attention d_{t+1}[j] sums
    d_t[i] M[i, j] over rows i >= j only, so row blocks are taken from the last to the first
    and each block does all ``pagerank_iters`` power steps while it is in cache: when a block does step
    t, every later row has already contributed to it, so the block's own d_t entries are final
    once its diagonal square has done step t-1. Its keys before the block then take all steps
    in one matrix product. Same sums as d <- d M repeated, in another order (agrees to float32
    rounding).
    """
    b, nh, n, hd = query.shape
    nkv = key.shape[1]
    if key.shape[-2] != n:
        raise ValueError(f"importance needs keys for exactly the queried tokens: {key.shape[-2]} != {n}")
    if nh % nkv:
        raise ValueError(f"query heads {nh} not a multiple of key/value heads {nkv}")
    group = nh // nkv
    valid = valid.to(torch.bool)
    all_valid = _all_present(valid, all_valid)
    voters = valid if voters is None else voters.to(torch.bool) & valid
    present = voters.sum(dim=-1, keepdim=True).clamp_min(1).to(torch.float32)
    start = voters.to(torch.float32) / present  # uniform 1/N over the voting tokens
    # Fold scale and temperature into q (masking after dividing by tau, as docs/method.md says);
    # group the query heads by the key/value head they share: one matmul per group and block.
    q = (query.to(torch.float32) * (scaling / tau)).reshape(b, nkv, group, n, hd)
    k = key.to(torch.float32)
    chunk, rows = pagerank_blocking(b, nkv, group, n, query.device, max_bytes, row_block)
    causal = torch.ones(rows, rows, dtype=torch.bool, device=query.device).tril_()
    sum_sq = torch.zeros(b, n, dtype=torch.float32, device=query.device)
    for g0 in range(0, nkv, chunk):
        kv = slice(g0, min(nkv, g0 + chunk))
        c = kv.stop - kv.start
        d = torch.zeros(b, c, group, pagerank_iters + 1, n, dtype=torch.float32, device=query.device)
        d[..., 0, :] = start[:, None, None, :]
        for i0 in reversed(range(0, n, rows)):
            i1 = min(n, i0 + rows)
            m = i1 - i0
            logits = torch.matmul(q[:, kv, :, i0:i1].reshape(b, c, group * m, hd), k[:, kv, :i1].transpose(-1, -2))
            logits = logits.view(b, c, group, m, i1)
            _mask_block(logits, valid, all_valid, i0, causal[:m, :m])
            probs = torch.softmax(logits, dim=-1)
            # The block's own square: step t needs this block's step t-1, so one step at a time.
            square = probs[..., i0:i1]
            for t in range(pagerank_iters):
                d[..., t + 1, i0:i1] += torch.matmul(d[..., t : t + 1, i0:i1], square).squeeze(-2)
            if i0:
                # Keys before the block: all steps at once, one (pagerank_iters x m) @ (m x i0) product
                # that reads these probabilities once instead of once per step.
                d[..., 1:, :i0] += torch.matmul(d[..., :pagerank_iters, i0:i1], probs[..., :i0])
        sum_sq += d[..., pagerank_iters, :].square().sum(dim=(1, 2))
    return (sum_sq / nh).sqrt()


def _mask_block(logits: torch.Tensor, valid: torch.Tensor, all_valid: bool, i0: int, causal: torch.Tensor) -> None:
    """Mask, in place, the logits (B, ..., m, i1) of query rows i0..i0+m-1 against keys 0..i1-1.

    Keys before the block only need the padding mask (skipped when nothing is invalid); the
    block's own square gets the causal mask. Every row keeps its diagonal, so no row is all
    -inf (no NaN); invalid queries start with mass 0 and no valid query looks at them, so their
    rows never carry any share.
    """
    m = causal.shape[0]
    if all_valid:
        logits[..., i0 : i0 + m].masked_fill_(~causal, float("-inf"))
        return
    # (B, 1, ..., 1, N): broadcasts over the head dimensions and the query rows
    keys_valid = valid.view(valid.shape[0], *([1] * (logits.dim() - 2)), valid.shape[-1])
    if i0:
        logits[..., :i0].masked_fill_(~keys_valid[..., :i0], float("-inf"))
    eye = torch.eye(m, dtype=torch.bool, device=logits.device)
    allowed = (causal & keys_valid[..., i0 : i0 + m]) | eye
    logits[..., i0 : i0 + m].masked_fill_(~allowed, float("-inf"))


def attention_importance(
    query: torch.Tensor,
    key: torch.Tensor,
    valid: torch.Tensor,
    scaling: float,
    max_bytes: int = 1 << 30,
    all_valid: Optional[bool] = None,
    voters: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Cheaper score, NOT the paper's: mean causal attention (tau 1) each token receives from
    the present queries (``voters``, default all valid), averaged over heads. One softmax, no
    power iterations."""
    b, nh, n, _ = query.shape
    group = nh // key.shape[1]
    valid = valid.to(torch.bool)
    voters = valid if voters is None else voters.to(torch.bool) & valid
    total = torch.zeros(b, n, dtype=torch.float32, device=query.device)
    chunk = heads_per_chunk(b, nh, n, _chunk_budget(query.device, max_bytes))
    for h0 in range(0, nh, chunk):
        heads = torch.arange(h0, min(nh, h0 + chunk), device=query.device)
        blocks = _causal_probs(
            query[:, heads].to(torch.float32), key[:, heads // group].to(torch.float32), valid, scaling, 1.0,
            all_valid,
        )
        for rows, probs in blocks:
            # only present voting queries vote
            total[:, : rows.stop] += (probs * voters[:, None, rows, None]).sum(dim=(1, 2))
    present = voters.sum(dim=-1, keepdim=True).clamp_min(1).to(torch.float32)
    return total / (nh * present) * valid


def select_survivors(
    scores: torch.Tensor, visual: torch.Tensor, alive: torch.Tensor, keep_visual: torch.Tensor,
    tie_scores: Optional[torch.Tensor] = None, check_nan: bool = True,
) -> torch.Tensor:
    """Which present tokens go on to the next layer, as a (B, N) bool mask.

    Every present non-visual token survives. Among the present visual tokens of sample b the
    ``keep_visual[b]`` highest-scoring survive. Exactly equal scores are ranked by
    ``tie_scores`` (higher first) when given, then by index (lower first). ``check_nan=False``
    leaves the NaN check to the caller (the decoder driver checks once after its layer loop,
    without a device read per layer).
    """
    if check_nan and has_nan(scores, tie_scores):
        raise FloatingPointError("importance scores contain NaN; refusing a NaN-driven selection")
    candidates = visual & alive
    ranked_scores = scores.masked_fill(~candidates, float("-inf"))
    if tie_scores is None:
        order = torch.sort(ranked_scores, dim=-1, descending=True, stable=True).indices
    else:
        # Two stable sorts make a lexicographic order: by the tie key first, then by the score.
        by_tie = torch.sort(tie_scores.masked_fill(~candidates, float("-inf")), dim=-1, descending=True, stable=True).indices
        order = by_tie.gather(1, torch.sort(ranked_scores.gather(1, by_tie), dim=-1, descending=True, stable=True).indices)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    chosen = candidates & (rank < keep_visual.to(rank.device)[:, None])
    return (alive & ~visual) | chosen


def has_nan(scores: torch.Tensor, tie_scores: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A 0-dim bool tensor on the scores' device: whether either holds a NaN (no host read)."""
    found = torch.isnan(scores).any()
    return found if tie_scores is None else found | torch.isnan(tie_scores).any()


def tie_counts(scores: torch.Tensor, visual: torch.Tensor, alive: torch.Tensor, keep: torch.Tensor):
    """(zero_scores (B,), tie_decided (B,)) of one selection, as python lists of ints
    (:func:`tie_count_tensors` read to the host)."""
    zero, decided = tie_count_tensors(scores, visual, alive, keep)
    return zero.tolist(), decided.tolist()


def tie_count_tensors(scores: torch.Tensor, visual: torch.Tensor, alive: torch.Tensor, keep: torch.Tensor):
    """(zero_scores (B,), tie_decided (B,)) of one selection, long tensors on the scores' device.

    zero_scores: present visual tokens whose score is exactly 0 (e.g. PageRank mass that
    underflowed in float32). tie_decided: survivors whose score equals the lowest surviving
    score while some pruned token has that same score, i.e. survivors that the tie rule chose,
    not the score.
    """
    candidates = visual & alive
    zero = (candidates & (scores == 0)).sum(dim=1)
    chosen, dropped = candidates & keep, candidates & ~keep
    # (a fill, not torch.tensor(inf): a copy from the host would wait for the device)
    boundary = scores.masked_fill(~chosen, float("inf")).min(dim=1, keepdim=True).values  # lowest survivor
    contested = (dropped & (scores == boundary)).any(dim=1)
    decided = (chosen & (scores == boundary)).sum(dim=1) * contested
    return zero, decided


def log_first_step_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    valid: torch.Tensor,
    scaling: float,
    tau: float = 0.1,
    max_bytes: int = 1 << 30,
    all_valid: Optional[bool] = None,
    voters: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """log of the PageRank mass each token holds after the FIRST power step, root-mean-square
    over heads, computed in the log domain: (B, N) float32, -inf where not valid.

    The same transition matrix as :func:`pagerank_importance` (causal, temperature ``tau``,
    over the valid tokens), d_1[j] = sum_i M[i, j] / N; as log-sum-exp of (logit - row lse) it
    never underflows, so it still orders tokens whose PageRank score is exactly 0. Every voting
    token receives at least its own diagonal share, so the result is finite there. ``voters``:
    the valid tokens whose rows cast shares (default: all valid).
    """
    b, nh, n, hd = query.shape
    nkv = key.shape[1]
    group = nh // nkv
    valid = valid.to(torch.bool)
    all_valid = _all_present(valid, all_valid)
    restricted = voters is not None
    voters = valid if voters is None else voters.to(torch.bool) & valid
    q = (query.to(torch.float32) * (scaling / tau)).reshape(b, nkv, group, n, hd)
    k = key.to(torch.float32)
    chunk, rows = pagerank_blocking(b, nkv, group, n, query.device, max_bytes)
    causal = torch.ones(rows, rows, dtype=torch.bool, device=query.device).tril_()
    received = torch.full((b, nkv, group, n), float("-inf"), dtype=torch.float32, device=query.device)
    for g0 in range(0, nkv, chunk):
        kv = slice(g0, min(nkv, g0 + chunk))
        c = kv.stop - kv.start
        for i0 in range(0, n, rows):
            i1 = min(n, i0 + rows)
            m = i1 - i0
            logits = torch.matmul(q[:, kv, :, i0:i1].reshape(b, c, group * m, hd), k[:, kv, :i1].transpose(-1, -2))
            logits = logits.view(b, c, group, m, i1)
            _mask_block(logits, valid, all_valid, i0, causal[:m, :m])
            shares = logits - torch.logsumexp(logits, dim=-1, keepdim=True)  # log M[i, j]
            if not all_valid or restricted:  # invalid (or non-voting) queries cast no share
                shares.masked_fill_(~voters[:, None, None, i0:i1, None], float("-inf"))
            received[:, kv, :, :i1] = torch.logaddexp(received[:, kv, :, :i1], torch.logsumexp(shares, dim=-2))
    present = voters.sum(dim=-1).clamp_min(1).to(torch.float32)
    per_head = received.reshape(b, nh, n) - present.log()[:, None, None]
    out = 0.5 * (torch.logsumexp(2 * per_head, dim=1) - torch.log(torch.tensor(float(nh))))
    return out.masked_fill(~valid, float("-inf"))


def compact_left(keep: torch.Tensor, width: Optional[int] = None):
    """Indices that gather the kept slots of each row, in order, right-aligned.

    Rows with fewer kept slots are left-padded with dead slots (like left padding), so every
    row keeps its causal order. Returns (index (B, M), alive (B, M)) with M the largest count.
    ``width``: M when the caller knows it (the driver's schedule does), sparing a device read.
    """
    if width is None:
        width = int(keep.sum(dim=-1).max().item())
    order = torch.sort(keep.to(torch.int8), dim=-1, stable=True).indices  # dropped first, kept last
    index = order[:, order.shape[1] - width :]
    return index, keep.gather(1, index)


def last_token_attention(query: torch.Tensor, key: torch.Tensor, valid: torch.Tensor, scaling: float,
                         voters: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Attention the last present token pays every token, mean over heads: (B, N) float32.
    With ``voters`` (B, N) bool: the last present voting token, attending its earlier keys.

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
    caster = valid if voters is None else voters.to(torch.bool) & valid
    last = (n - 1) - caster.flip(-1).to(torch.int8).argmax(dim=-1)  # (B,) last present (voting) slot
    rows = torch.arange(b, device=query.device)
    q = query[rows, :, last].to(torch.float32).reshape(b, nkv, nh // nkv, 1, d)
    k = key.to(torch.float32).unsqueeze(2)  # (B, nkv, 1, N, d)
    logits = torch.matmul(q, k.transpose(-1, -2)).reshape(b, nh, n) * scaling
    seen = valid if voters is None else valid & (torch.arange(n, device=valid.device) <= last[:, None])
    logits = logits.masked_fill(~seen[:, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1).mean(dim=1) * seen


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


def step_token_attention(query: torch.Tensor, key: torch.Tensor, alive: torch.Tensor, scaling: float) -> torch.Tensor:
    """A decode step's token's attention over a layer's keys, mean over heads, float32: (B, K).
    (DyCoke's decode-time ranking, llava.aim.dycoke; the driver computes it for any decode
    selection of llava.aim.registry.)

    query (B, nh, 1, d) post-RoPE; key (B, nkv, K, d) the whole cache (GQA groups repeated);
    alive (B, K) the keys the layer may attend (dead padding slots get 0)."""
    q = query[:, :, -1].float()
    kk = key.float().repeat_interleave(q.shape[1] // key.shape[1], dim=1)
    logits = torch.einsum("bhd,bhkd->bhk", q, kk) * scaling
    logits = logits.masked_fill(~alive[:, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1).mean(dim=1)
