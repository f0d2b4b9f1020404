"""The roofline FLOPs / prefill-time model (docs/efficiency_model.md), op by op.

Every op has OPs (FLOPs) and bytes moved; its time is ``OPs / min(peak, OPs/bytes * bandwidth)``
(computed as the equivalent ``max(OPs/peak, bytes/bandwidth)``, which is also defined for an op
of zero OPs). A decoder layer with N tokens (batch 1, no FlashAttention) is:

=============  ===================  =========================================================
op             OPs                  bytes (w = weight, a = activation, kv = KV element bytes)
=============  ===================  =========================================================
attn_norm      7*H*N                2*H*N*a
q_proj         2*H*(nh*d)*N         H*nh*d*w + H*N*a + nh*d*N*a
k_proj         2*H*(nkv*d)*N        H*nkv*d*w + H*N*a + nkv*d*N*kv   (output = KV-cache store)
v_proj         2*H*(nkv*d)*N        as k_proj
qk_matmul      2*N*N*d*nh           N*d*nkv*a (query side, as the reference model counts it)
                                    + N*N*nh*a (store scores) + N*d*nkv*kv (load K)
softmax        5*nh*N*N             2*nh*N*N*a
sv_matmul      2*N*N*d*nh           N*N*nh*a (load probabilities) + N*d*nh*a (store)
                                    + N*d*nkv*kv (load V)
o_proj         2*(nh*d)*H*N         nh*d*H*w + nh*d*N*a + H*N*a
attn_add       H*N                  2*H*N*a
mlp_norm       7*H*N                2*H*N*a
gate_proj      2*H*I*N              H*I*w + H*N*a + I*N*a
up_proj        2*H*I*N              as gate_proj
mlp_act        2*H*N                3*H*N*a   (SiLU-gate counted with H, not I: see below)
down_proj      2*I*H*N              I*H*w + I*N*a + H*N*a
mlp_add        H*N                  2*H*N*a   (only with include_mlp_add=True)
=============  ===================  =========================================================

Once per prefill: ``lm_head`` on one token, OPs = H*V, bytes = H*V*w + H*a + V*a.

With ``head_dim = H/nh`` (Qwen2, Llama) the projections are exactly the (H, H) and
(H, H*nkv/nh) of docs/efficiency_model.md.

Kept from the reference model (LLM-Viewer) for comparability with the paper, and said so in
every result's ``notes``: the SiLU-gate activation is counted with H, not I; the query side of
``qk_matmul`` is loaded as N*d*nkv; attention is counted over the full N x N (no causal
halving); the lm_head counts H*V OPs (not 2*H*V) on one token.

FlashAttention variant (``flash_attention=True``; beyond the paper's model): qk_matmul,
softmax and sv_matmul become one fused op ``fused_attention`` with the sum of their OPs and the
ideal IO of a fused kernel: load Q (N*d*nh*a), load K and V once (2*N_k*d*nkv*kv) and store the
output (N*d*nh*a). No N x N score or probability matrix reaches memory. (A real kernel re-reads
K/V once per query block; this is the lower bound of its traffic. The query side is counted
with all nh heads here, not the reference's nkv.)

Decode (``decode_step_cost``): one new token per step; layer j attends over its KV cache plus
the new token (kv_lens[j] + 1 keys); the same ops with N = 1 query and the key count above;
plus the lm_head. A method with a decode selection (its registry entry of kind "decode") has
layer j attend ``attended[j] + 1`` keys instead (the entry's ``attended``), and the selection's
own work is the step's ``overhead`` ops. KV-cache bytes of layer j: 2 * N_j * nkv * d * kv (the
whole cache, whatever a step attends).

Reported separately, never added to the prefill figures: the vision encoder and projector,
AIM's own overhead (merging and importance) and the KV cache.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from llava.aim.config import AIMConfig
from llava.aim.merge import merge_schedule, merged_token_count
from llava.aim.registry import entry_stages
from llava.aim.policy import (AIM_PAPER_L1, AIM_PAPER_L2, AIM_PAPER_LAYERS, drop_layers_for, fold_of, reduction_of,
                              score_of, spec)
from llava.aim.schedule import CONVENTIONS, policy_visual_tokens, pruning_layers, scoring_layers
from llava.analysis.hardware import Hardware, get_hardware
from llava.analysis.shapes import LLMShape, VisionShape, get_llm, get_vision
from llava.errors import AIMConfigError

# The paper's main setting on Qwen2-7B (28 layers).
PAPER_RETENTION = 0.25
PAPER_L1, PAPER_L2, PAPER_LAYERS = AIM_PAPER_L1, AIM_PAPER_L2, AIM_PAPER_LAYERS  # one definition: llava.aim.policy

NOTE_SILU = "SiLU-gate (mlp_act) is counted with H, not I, as the reference model (LLM-Viewer) does"
NOTE_REFERENCE = (
    "as in the reference model: qk_matmul loads the query side as N*d*nkv, attention is counted "
    "over the full N x N (no causal halving), lm_head runs on one token with H*V OPs"
)
NOTE_SEPARATE = (
    "vision encoder + projector, AIM overhead (merging, importance) and the KV cache are "
    "reported separately, never included in the LLM prefill figures"
)


# --- options and single ops ----------------------------------------------------------------


@dataclass(frozen=True)
class RooflineOptions:
    """Byte sizes (16-bit by default) and model variants."""

    weight_bytes: float = 2
    act_bytes: float = 2
    kv_bytes: float = 2
    flash_attention: bool = False
    include_mlp_add: bool = False

    def __post_init__(self) -> None:
        for name in ("weight_bytes", "act_bytes", "kv_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise AIMConfigError(f"{name} must be a positive number, got {value!r}")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def roofline_time(ops: float, nbytes: float, hardware: Hardware) -> float:
    """``OPs / min(peak, OPs/bytes * bandwidth)``, i.e. ``max(OPs/peak, bytes/bandwidth)``."""
    return max(ops / hardware.flops, nbytes / hardware.bandwidth)


@dataclass(frozen=True)
class OpCost:
    name: str
    ops: float
    bytes: float
    time_s: float

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, OPs per byte."""
        return self.ops / self.bytes if self.bytes else math.inf

    def bound(self, hardware: Hardware) -> str:
        return "compute" if self.intensity >= hardware.ridge_point else "memory"

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "ops": self.ops, "bytes": self.bytes, "time_s": self.time_s}


def _op(name: str, ops: float, nbytes: float, hw: Hardware) -> OpCost:
    return OpCost(name, float(ops), float(nbytes), roofline_time(ops, nbytes, hw))


def _linear(name: str, n_in: int, n_out: int, n: int, o: RooflineOptions, hw: Hardware, kv_out: bool = False) -> OpCost:
    out_bytes = o.kv_bytes if kv_out else o.act_bytes
    return _op(name, 2 * n_in * n_out * n, n_in * n_out * o.weight_bytes + n_in * n * o.act_bytes + n_out * n * out_bytes, hw)


def attention_ops(
    n_q: int, n_k: int, heads: int, kv_heads: int, head_dim: int, o: RooflineOptions, hw: Hardware,
    reference_q_side: bool = True,
) -> List[OpCost]:
    """qk_matmul, softmax, sv_matmul for n_q queries over n_k keys (or one fused op).

    ``reference_q_side``: load the query side of qk_matmul as n_q*d*nkv, as the reference model
    does (kept for the LLM; a vision tower with nh == nkv is unaffected).
    """
    a, kv, d = o.act_bytes, o.kv_bytes, head_dim
    qk_ops = 2 * n_q * n_k * d * heads
    sm_ops = 5 * heads * n_q * n_k
    sv_ops = 2 * n_q * n_k * d * heads
    if o.flash_attention:
        nbytes = n_q * d * heads * a + 2 * n_k * d * kv_heads * kv + n_q * d * heads * a
        return [_op("fused_attention", qk_ops + sm_ops + sv_ops, nbytes, hw)]
    q_heads = kv_heads if reference_q_side else heads
    return [
        _op("qk_matmul", qk_ops, n_q * d * q_heads * a + n_q * n_k * heads * a + n_k * d * kv_heads * kv, hw),
        _op("softmax", sm_ops, 2 * heads * n_q * n_k * a, hw),
        _op("sv_matmul", sv_ops, n_q * n_k * heads * a + n_q * d * heads * a + n_k * d * kv_heads * kv, hw),
    ]


def layer_ops(llm: LLMShape, n: int, hardware: Hardware, options: Optional[RooflineOptions] = None,
              n_keys: Optional[int] = None) -> List[OpCost]:
    """The ops of one decoder layer on ``n`` new tokens attending over ``n_keys`` keys
    (default ``n``: prefill)."""
    o = options or RooflineOptions()
    hw = hardware
    H, I, a = llm.hidden, llm.intermediate, o.act_bytes
    n_k = n if n_keys is None else n_keys
    ops = [
        _op("attn_norm", 7 * H * n, 2 * H * n * a, hw),
        _linear("q_proj", H, llm.q_dim, n, o, hw),
        _linear("k_proj", H, llm.kv_dim, n, o, hw, kv_out=True),
        _linear("v_proj", H, llm.kv_dim, n, o, hw, kv_out=True),
        *attention_ops(n, n_k, llm.heads, llm.kv_heads, llm.head_dim, o, hw),
        _linear("o_proj", llm.q_dim, H, n, o, hw),
        _op("attn_add", H * n, 2 * H * n * a, hw),
        _op("mlp_norm", 7 * H * n, 2 * H * n * a, hw),
        *(mlp_ops(H, I, n, o, hw) if not llm.moe else moe_mlp_ops(llm, n, o, hw)),
    ]
    if o.include_mlp_add:
        ops.append(_op("mlp_add", H * n, 2 * H * n * a, hw))
    return ops


def mlp_ops(H: int, I: int, n: int, o: RooflineOptions, hw: Hardware) -> List[OpCost]:
    """A dense gated MLP on ``n`` tokens."""
    return [
        _linear("gate_proj", H, I, n, o, hw),
        _linear("up_proj", H, I, n, o, hw),
        _op("mlp_act", 2 * H * n, 3 * H * n * o.act_bytes, hw),  # H, not I: the reference model's count
        _linear("down_proj", I, H, n, o, hw),
    ]


def moe_mlp_ops(llm: LLMShape, n: int, o: RooflineOptions, hw: Hardware) -> List[OpCost]:
    """A mixture-of-experts MLP on ``n`` tokens: the router (H x experts per token), then each
    token through its top-k experts (gated MLPs of expert_intermediate: the active experts'
    FLOPs, on k*n token rows), and the weighted sum of the k outputs. Weights read: the experts
    the k*n rows can reach (at most all of them)."""
    H, Ie, E, k, a = llm.hidden, llm.expert_intermediate, llm.experts, llm.experts_per_token, o.act_bytes
    rows = k * n
    touched = min(E, rows)  # experts whose weights are read

    def expert_linear(name: str, n_in: int, n_out: int) -> OpCost:
        return _op(name, 2 * n_in * n_out * rows,
                   touched * n_in * n_out * o.weight_bytes + n_in * rows * a + n_out * rows * a, hw)

    return [
        _linear("router", H, E, n, o, hw),
        expert_linear("expert_gate_proj", H, Ie),
        expert_linear("expert_up_proj", H, Ie),
        _op("expert_act", 2 * H * rows, 3 * H * rows * a, hw),  # H per row, as the dense count
        expert_linear("expert_down_proj", Ie, H),
        _op("expert_combine", 2 * H * rows, (rows + n) * H * a, hw),  # weight each output, sum k per token
    ]


def lm_head_op(llm: LLMShape, hardware: Hardware, options: Optional[RooflineOptions] = None) -> OpCost:
    o = options or RooflineOptions()
    H, V = llm.hidden, llm.vocab
    return _op("lm_head", H * V, H * V * o.weight_bytes + H * o.act_bytes + V * o.act_bytes, hardware)


def kv_cache_bytes_per_layer(llm: LLMShape, tokens_per_layer: Sequence[int], kv_bytes: float = 2) -> List[float]:
    """Bytes of each layer's KV cache holding N_j tokens: 2 * N_j * nkv * d * kv_bytes."""
    return [float(2 * n * llm.kv_heads * llm.head_dim * kv_bytes) for n in tokens_per_layer]


# --- a whole step --------------------------------------------------------------------------


class _OpTotals:
    """Totals over ``self.ops`` (a tuple of OpCost), shared by per-layer and per-component costs."""

    ops: Tuple[OpCost, ...]

    @property
    def flops(self) -> float:
        return sum(op.ops for op in self.ops)

    @property
    def bytes(self) -> float:
        return sum(op.bytes for op in self.ops)

    @property
    def time_s(self) -> float:
        return sum(op.time_s for op in self.ops)


@dataclass(frozen=True)
class LayerCost(_OpTotals):
    index: int
    tokens: int  # new tokens processed by this layer (prefill: N_j; decode: 1)
    keys: int  # keys attended over
    ops: Tuple[OpCost, ...]

    def to_dict(self, with_ops: bool = True) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "index": self.index, "tokens": self.tokens, "keys": self.keys,
            "flops": self.flops, "bytes": self.bytes, "time_s": self.time_s,
        }
        if with_ops:
            out["ops"] = [op.to_dict() for op in self.ops]
        return out


@dataclass(frozen=True)
class StepCost:
    """A forward step of the language model: its layers plus the lm_head on one token, plus
    ``overhead``: work a method adds to the step (a decode selection's, llava.aim.registry)."""

    layers: Tuple[LayerCost, ...]
    lm_head: OpCost
    overhead: Tuple[OpCost, ...] = ()

    @property
    def flops(self) -> float:
        return sum(layer.flops for layer in self.layers) + self.lm_head.ops + sum(op.ops for op in self.overhead)

    @property
    def bytes(self) -> float:
        return sum(layer.bytes for layer in self.layers) + self.lm_head.bytes + sum(op.bytes for op in self.overhead)

    @property
    def time_s(self) -> float:
        return sum(layer.time_s for layer in self.layers) + self.lm_head.time_s + sum(op.time_s for op in self.overhead)

    def op_totals(self) -> Dict[str, Dict[str, float]]:
        """Per op name, summed over layers: ops, bytes, time_s (lm_head and overhead included)."""
        totals: Dict[str, Dict[str, float]] = {}
        for op in [op for layer in self.layers for op in layer.ops] + [self.lm_head, *self.overhead]:
            t = totals.setdefault(op.name, {"ops": 0.0, "bytes": 0.0, "time_s": 0.0})
            t["ops"] += op.ops
            t["bytes"] += op.bytes
            t["time_s"] += op.time_s
        return totals

    def to_dict(self, with_ops: bool = False) -> Dict[str, Any]:
        return {
            "flops": self.flops, "bytes": self.bytes, "time_s": self.time_s,
            "layers": [layer.to_dict(with_ops) for layer in self.layers],
            "lm_head": self.lm_head.to_dict(),
            "overhead": [op.to_dict() for op in self.overhead],
            "op_totals": self.op_totals(),
        }


def prefill_cost(llm: LLMShape, tokens_per_layer: Sequence[int], hardware: Union[str, Hardware] = "nvidia_A100",
                 options: Optional[RooflineOptions] = None) -> StepCost:
    """Prefill: layer j on N_j tokens (``tokens_per_layer[j]``), then the lm_head on one token."""
    hw = get_hardware(hardware)
    if len(tokens_per_layer) != llm.layers:
        raise AIMConfigError(f"need {llm.layers} per-layer token counts, got {len(tokens_per_layer)}")
    layers = tuple(LayerCost(j, int(n), int(n), tuple(layer_ops(llm, int(n), hw, options)))
                   for j, n in enumerate(tokens_per_layer))
    return StepCost(layers, lm_head_op(llm, hw, options))


def decode_step_cost(llm: LLMShape, kv_lens: Sequence[int], hardware: Union[str, Hardware] = "nvidia_A100",
                     options: Optional[RooflineOptions] = None, attended: Optional[Sequence[int]] = None,
                     overhead: Sequence[OpCost] = ()) -> StepCost:
    """One decode step: a single new token; layer j attends over ``kv_lens[j] + 1`` keys
    (its cache plus the new token; with AIM each layer's cache holds only its survivors).

    ``attended[j]`` (at most ``kv_lens[j]``): the cached keys layer j's attention reads where a
    decode selection leaves some out (the cache still holds all ``kv_lens[j]``). Its K and V
    traffic is that of the attended keys only: the selected entries are gathered (the official
    DyCoke code gathers them from the cache before attention), so a kernel need read no other;
    this is the lower bound, as the flash-attention variant's IO is (a masked kernel over the
    whole cache, as this project's runtime runs, reads every entry). ``overhead``: the
    selection's own work in the step."""
    hw = get_hardware(hardware)
    if len(kv_lens) != llm.layers:
        raise AIMConfigError(f"need {llm.layers} per-layer KV lengths, got {len(kv_lens)}")
    keys = [int(c) for c in (kv_lens if attended is None else attended)]
    if len(keys) != llm.layers or any(not 0 <= k <= int(c) for k, c in zip(keys, kv_lens)):
        raise AIMConfigError(f"attended keys must be {llm.layers} counts within the KV lengths {list(kv_lens)}, "
                             f"got {list(keys)}")
    layers = tuple(LayerCost(j, 1, k + 1, tuple(layer_ops(llm, 1, hw, options, n_keys=k + 1)))
                   for j, k in enumerate(keys))
    return StepCost(layers, lm_head_op(llm, hw, options), tuple(overhead))


def prompt_tokens_per_layer(text_tokens: int, visual_tokens_per_layer: Sequence[int]) -> List[int]:
    """N_j = text + visual_j: the sequence layer j computes. ``flops`` (analyze) and ``run``
    (llava.run.predicted_prefill) count tokens with this one rule; the text tokens are the
    prompt's non-visual tokens only (never a reserved, unused visual placeholder)."""
    return [int(text_tokens) + int(v) for v in visual_tokens_per_layer]


def reduction_figures(prefill: StepCost, baseline: StepCost) -> Dict[str, float]:
    """The headline figures of a reduction against the same prompt without it, as both
    ``flops`` and ``run`` print them: TFLOPs and roofline ms of each, FLOPs ratio, speed-up."""
    return {
        "prefill_tflops": prefill.flops / 1e12,
        "baseline_prefill_tflops": baseline.flops / 1e12,
        "prefill_ms": prefill.time_s * 1e3,
        "baseline_prefill_ms": baseline.time_s * 1e3,
        "flops_saved": 1.0 - prefill.flops / baseline.flops,
        "flops_reduction": baseline.flops / prefill.flops,
        "speedup": baseline.time_s / prefill.time_s,
    }


# --- separately reported costs -------------------------------------------------------------


@dataclass(frozen=True)
class ComponentCost(_OpTotals):
    """A cost reported next to, never inside, the LLM prefill (vision encoder, AIM overhead)."""

    name: str
    ops: Tuple[OpCost, ...]

    def part(self, prefix: str) -> float:
        """FLOPs of the ops whose name starts with ``prefix``."""
        return sum(op.ops for op in self.ops if op.name.startswith(prefix))

    def to_dict(self, with_ops: bool = True) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "flops": self.flops, "bytes": self.bytes, "time_s": self.time_s}
        if with_ops:
            out["ops"] = [op.to_dict() for op in self.ops]
        return out


def _scaled(op: OpCost, k: int, prefix: str = "") -> OpCost:
    return OpCost(prefix + op.name, op.ops * k, op.bytes * k, op.time_s * k)


def vision_encoder_cost(vision: VisionShape, llm: LLMShape, frames: int, hardware: Union[str, Hardware] = "nvidia_A100",
                        options: Optional[RooflineOptions] = None) -> ComponentCost:
    """Vision tower + 2-layer MLP projector, one frame at a time, times ``frames``.

    Per frame with N encoder tokens, hidden D, MLP Dm: patch embedding (a linear map of each
    p*p*3 patch), then per layer LayerNorm (counted like RMSNorm, 7 OPs/element), q/k/v/o
    (D, D), full bidirectional attention (same attention ops, nh == nkv), residual add,
    LayerNorm, fc1 (D, Dm), GELU (8 OPs/element, read + write), fc2 (Dm, D), residual add;
    then the projector (D -> H, GELU, H -> H) on the patch tokens. Biases, the 2x2 pooling of
    LLaVA-OneVision and the post-LayerNorm are left out (negligible).

    Qwen-VL towers (one "frame" = one temporal group of 2 frames, N its patches): a SwiGLU MLP
    where ``vision.mlp`` says so (gate, up: D -> Dm; SiLU * up, 9 OPs/element; down: Dm -> D),
    windowed attention in all but ``full_attention_layers`` blocks where ``window_tokens`` is set
    (ceil(N / w) windows of w x w), and the patch merger as projector (LayerNorm, then 4D -> 4D,
    GELU, 4D -> H on N / 4 tokens).
    """
    hw = get_hardware(hardware)
    o = options or RooflineOptions()
    a, n, D, Dm = o.act_bytes, vision.tokens, vision.hidden, vision.intermediate
    patches = vision.patches
    per_frame: List[OpCost] = [_linear("patch_embed", vision.patch_size ** 2 * vision.channels, D, patches, o, hw)]
    if vision.mlp == "swiglu":  # Qwen2.5-VL: gate and up (D -> Dm), SiLU * up, down (Dm -> D)
        mlp = [_linear("gate_proj", D, Dm, n, o, hw), _linear("up_proj", D, Dm, n, o, hw),
               _op("silu_mul", 9 * Dm * n, 3 * Dm * n * a, hw), _linear("down_proj", Dm, D, n, o, hw)]
    else:
        mlp = [_linear("fc1", D, Dm, n, o, hw), _op("gelu", 8 * Dm * n, 2 * Dm * n * a, hw),
               _linear("fc2", Dm, D, n, o, hw)]
    layer: List[OpCost] = [
        _op("ln1", 7 * D * n, 2 * D * n * a, hw),
        _linear("q_proj", D, D, n, o, hw),
        _linear("k_proj", D, D, n, o, hw),
        _linear("v_proj", D, D, n, o, hw),
        _linear("o_proj", D, D, n, o, hw),
        _op("attn_add", D * n, 2 * D * n * a, hw),
        _op("ln2", 7 * D * n, 2 * D * n * a, hw),
        *mlp,
        _op("mlp_add", D * n, 2 * D * n * a, hw),
    ]
    per_frame += [_scaled(op, vision.layers, "encoder.") for op in layer]
    full_layers = vision.layers
    if vision.window_tokens and vision.window_tokens < n:  # windowed blocks: n / w windows of w x w
        w = vision.window_tokens
        full_layers = min(vision.full_attention_layers, vision.layers)
        windows = math.ceil(n / w)
        per_frame += [_scaled(op, windows * (vision.layers - full_layers), "encoder.window_")
                      for op in attention_ops(w, w, vision.heads, vision.heads, vision.head_dim, o, hw,
                                              reference_q_side=False)]
    per_frame += [_scaled(op, full_layers, "encoder.")
                  for op in attention_ops(n, n, vision.heads, vision.heads, vision.head_dim, o, hw, reference_q_side=False)]
    H = llm.hidden
    if vision.spatial_merge > 1:  # the patch merger: an MLP over each m x m block of patches
        m2 = vision.spatial_merge ** 2
        tokens = patches // m2
        merger = [
            _op("merger.ln", 7 * D * patches, 2 * D * patches * a, hw),
            _linear("merger.fc1", D * m2, D * m2, tokens, o, hw),
            _op("merger.gelu", 8 * D * m2 * tokens, 2 * D * m2 * tokens * a, hw),
            _linear("merger.fc2", D * m2, H, tokens, o, hw),
        ]
        per_frame += merger
        if vision.extra_mergers:  # DeepStack-style mergers of intermediate layers, same shape
            per_frame += [_scaled(op, vision.extra_mergers, "extra_") for op in merger]
    else:
        per_frame += [
            _linear("projector.fc1", D, H, patches, o, hw),
            _op("projector.gelu", 8 * H * patches, 2 * H * patches * a, hw),
            _linear("projector.fc2", H, H, patches, o, hw),
        ]
    return ComponentCost(f"{vision.name} + projector x {frames} frames", tuple(_scaled(op, frames) for op in per_frame))


def merge_steps(tokens_per_frame: int, retention: float, merge_count: str = "official") -> List[Tuple[int, int]]:
    """(tokens before, tokens removed) of each bipartite merging step of one frame: the steps
    ``llava.aim.merge.merge_frames`` runs (``merge_schedule`` under ``merge_count``)."""
    t, steps = tokens_per_frame, []
    for r in merge_schedule(tokens_per_frame, retention, merge_count):
        steps.append((t, r))
        t -= r
    return steps


def merge_overhead_ops(tokens_per_frame: int, retention: float, channels: int, frames: int, hardware: Hardware,
                       options: Optional[RooflineOptions] = None, merge_count: str = "official") -> List[OpCost]:
    """Token merging on ``frames`` frames of ``channels``-wide tokens (the projected features).

    Per step on t tokens (na = ceil(t/2) sources, nb = floor(t/2) destinations, r merged):
    normalise (3*t*C OPs), similarity matmul (2*na*nb*C), best match (na*nb), combine
    ((r + nb)*C: adds and the division of the mean).
    """
    o = options or RooflineOptions()
    a, C = o.act_bytes, channels
    ops: List[OpCost] = []
    for i, (t, r) in enumerate(merge_steps(tokens_per_frame, retention, merge_count)):
        na, nb = (t + 1) // 2, t // 2
        step = [
            _op(f"merge.normalize[{i}]", 3 * t * C, 2 * t * C * a, hardware),
            _op(f"merge.similarity[{i}]", 2 * na * nb * C, (na + nb) * C * a + na * nb * a, hardware),
            _op(f"merge.match[{i}]", na * nb, na * nb * a, hardware),
            _op(f"merge.combine[{i}]", (r + nb) * C, t * C * a + (t - r) * C * a, hardware),
        ]
        ops += [_scaled(op, frames) for op in step]
    return ops


def paper_merge_overhead_ops(tokens_per_frame: int, retention: float, channels: int, frames: int,
                             hardware: Hardware, options: Optional[RooflineOptions] = None,
                             merge_count: str = "exact") -> List[OpCost]:
    """Merging as the paper's overhead table counts it (88.25 GFLOPs at 32 x 196, 1/4, C = 3584).

    The bipartite similarity is counted *jointly over all frames' tokens*: per step on
    t = frames * t_frame tokens with a = t/2 per side, 2*a^2*C (similarity) + 3*C*t
    (normalisation) + a*C (merging) + a^2 (argmax). The runtime merges each frame on its own
    (``merge_overhead_ops``); this count is about ``frames`` times its similarity work.
    """
    o = options or RooflineOptions()
    A, C = o.act_bytes, channels
    ops: List[OpCost] = []
    for i, (t_frame, _) in enumerate(merge_steps(tokens_per_frame, retention, merge_count)):
        t = frames * t_frame
        a = t / 2
        ops += [
            _op(f"merge.paper_similarity[{i}]", 2 * a * a * C, 2 * a * C * A + a * a * A, hardware),
            _op(f"merge.paper_normalize[{i}]", 3 * C * t, 2 * t * C * A, hardware),
            _op(f"merge.paper_combine[{i}]", a * C, 2 * a * C * A, hardware),
            _op(f"merge.paper_argmax[{i}]", a * a, a * a * A, hardware),
        ]
    return ops


PAPER_IMPORTANCE_OPS_PER_SCORE = 16  # per head and attention-map entry, as the paper's overhead table counts


def paper_importance_overhead_ops(llm: LLMShape, tokens_per_layer: Sequence[int], layers: Sequence[int],
                                  hardware: Hardware, options: Optional[RooflineOptions] = None) -> List[OpCost]:
    """Importance as the paper's overhead table counts it (4.18 GFLOPs at the paper's setting):
    16 * heads * N_j^2 at each pruning layer j (the drop-everything layer included), on the
    full N x N attention map the official code takes from the layer's own attention (so no
    QK^T is counted). The runtime recomputes QK^T over the causal pairs (``importance_overhead_ops``)."""
    o = options or RooflineOptions()
    ops: List[OpCost] = []
    for j in layers:
        n = int(tokens_per_layer[j])
        ops.append(_op(f"importance.paper[{j}]", PAPER_IMPORTANCE_OPS_PER_SCORE * llm.heads * n * n,
                       llm.heads * n * n * o.act_bytes, hardware))
    return ops


def importance_overhead_ops(llm: LLMShape, tokens_per_layer: Sequence[int], layers: Sequence[int], hardware: Hardware,
                            options: Optional[RooflineOptions] = None, pagerank_iters: int = 5,
                            score_bytes: float = 4) -> List[OpCost]:
    """PageRank importance at each pruning layer j on its N_j tokens (float32 scores), as
    ``llava.aim.importance.pagerank_importance`` computes it: only the P = N(N+1)/2 causal
    (query, key) pairs, in row blocks.

    QK^T over all heads (2*P*d*nh; loads Q and K, stores the scores), softmax with the
    temperature (5*nh*P; loads and stores them), ``pagerank_iters`` power steps (2*nh*P each) that
    load the probabilities once: a block's keys before it take all steps in one matrix
    product, only its small diagonal square is re-read per step (from cache, not counted).
    Root-mean-square over heads (3*nh*N).
    """
    o = options or RooflineOptions()
    a, s, nh, d = o.act_bytes, score_bytes, llm.heads, llm.head_dim
    ops: List[OpCost] = []
    for j in layers:
        n = int(tokens_per_layer[j])
        pairs = n * (n + 1) // 2
        ops += [
            _op(f"importance.qk[{j}]", 2 * pairs * d * nh, n * d * nh * a + n * d * llm.kv_heads * a + pairs * nh * s, hardware),
            _op(f"importance.softmax[{j}]", 5 * nh * pairs, 2 * nh * pairs * s, hardware),
            _op(f"importance.power[{j}]", pagerank_iters * 2 * nh * pairs, nh * pairs * s + 2 * pagerank_iters * nh * n * s, hardware),
            _op(f"importance.rms[{j}]", 3 * nh * n, nh * n * s + n * s, hardware),
        ]
    return ops


def pool_overhead_ops(tokens_per_frame: int, retention: float, channels: int, frames: int, hardware: Hardware,
                      options: Optional[RooflineOptions] = None, merge_count: str = "official") -> List[OpCost]:
    """Spatial pooling (the "pool" control) of ``frames`` frames to k tokens: one add per input
    element, one division per output element; reads the frame, writes the pooled tokens."""
    o = options or RooflineOptions()
    k, t, C = merged_token_count(tokens_per_frame, retention, merge_count), tokens_per_frame, channels
    return [_scaled(_op("pool", t * C + k * C, t * C * o.act_bytes + k * C * o.act_bytes, hardware), frames)]


def last_token_overhead_ops(llm: LLMShape, tokens_per_layer: Sequence[int], layers: Sequence[int], hardware: Hardware,
                            options: Optional[RooflineOptions] = None, score_bytes: float = 4) -> List[OpCost]:
    """The FastV / PyramidDrop score at each drop layer j on its N_j tokens: one query row
    against the keys over all heads (2*N*d*nh; loads the row and K), softmax (5*nh*N), mean
    over heads (nh*N)."""
    o = options or RooflineOptions()
    a, s, nh, d = o.act_bytes, score_bytes, llm.heads, llm.head_dim
    ops: List[OpCost] = []
    for j in layers:
        n = int(tokens_per_layer[j])
        ops += [
            _op(f"score.qk[{j}]", 2 * n * d * nh, d * nh * a + n * d * llm.kv_heads * a + n * nh * s, hardware),
            _op(f"score.softmax[{j}]", 5 * nh * n, 2 * nh * n * s, hardware),
            _op(f"score.mean[{j}]", nh * n, nh * n * s + n * s, hardware),
        ]
    return ops


def holitom_overhead_ops(frames: int, tokens_per_frame: int, channels: int, hardware: Hardware,
                         options: Optional[RooflineOptions] = None, score_bytes: float = 4) -> List[OpCost]:
    """HoliTom before the LLM on one video of F frames of T projected C-wide tokens
    (``llava.aim.holitom.holitom_frames``). Its DPC-KNN work depends on the content (how many
    tokens are static); priced here at its most: every pair of frames a window whose T tokens are
    all static.

    Frame similarity: normalise (3*F*T*C) and the (F-1)*T cosines (2*C each). The window table:
    F*F*T comparisons and sums. The temporal mean (F*T*C adds). DPC-KNN per window of S = T
    tokens, floor(F/2) windows: the distance matrix (3*S*S*C: difference, square, sum), the k
    nearest and the density (S*S, a partial sort), the separations (3*S*S), the assignment to the
    centres (S*S) and the weighted sums (2*S*C). The attention ranking of the dynamic tokens
    (a sort of F*T scores) is not worth counting."""
    o = options or RooflineOptions()
    a, s, C = o.act_bytes, score_bytes, channels
    f, t = frames, tokens_per_frame
    windows = f // 2
    ops = [
        _op("holitom.normalize", 3 * f * t * C, 2 * f * t * C * a, hardware),
        _op("holitom.similarity", 2 * max(f - 1, 0) * t * C, f * t * C * a + max(f - 1, 0) * t * s, hardware),
        _op("holitom.windows", 2 * f * f * t, f * t * s + f * f * s, hardware),
        _op("holitom.temporal_mean", f * t * C, f * t * C * a + t * C * a, hardware),
    ]
    if windows:
        ops += [_scaled(op, windows) for op in (
            _op("holitom.dpc_distances", 3 * t * t * C, t * C * a + t * t * s, hardware),
            _op("holitom.dpc_density", 5 * t * t, 2 * t * t * s, hardware),
            _op("holitom.dpc_assign", t * t, t * t * s, hardware),
            _op("holitom.dpc_merge", 2 * t * C, 2 * t * C * a, hardware),
        )]
    return ops


def holitom_fold_overhead_ops(llm: LLMShape, visual: Sequence[int], layers: Sequence[int], hardware: Hardware,
                              options: Optional[RooflineOptions] = None, score_bytes: float = 4) -> List[OpCost]:
    """HoliTom's inner merge at each drop after layer j (``llava.aim.holitom.fold_dropped_into_kept``):
    of V = visual[j] tokens K = visual[j+1] stay and D = V - K fold. Normalise both sides
    (3*V*C), cosine similarity (2*D*K*C), best match (D*K), the closed-form weights (a one-hot
    and its reverse running sum, 3*D*K) and the weighted sums ((D + K)*C multiply-adds, 2 OPs each)."""
    o = options or RooflineOptions()
    a, s, C = o.act_bytes, score_bytes, llm.hidden
    ops: List[OpCost] = []
    for j in layers:
        v, k = int(visual[j]), int(visual[j + 1])
        d = v - k
        ops += [
            _op(f"fold.normalize[{j}]", 3 * v * C, 2 * v * C * a, hardware),
            _op(f"fold.similarity[{j}]", 2 * d * k * C, v * C * a + d * k * s, hardware),
            _op(f"fold.match[{j}]", d * k, d * k * s, hardware),
            _op(f"fold.weights[{j}]", 3 * d * k, 2 * d * k * s, hardware),
            _op(f"fold.combine[{j}]", 2 * (d + k) * C, v * C * a + k * C * a, hardware),
        ]
    return ops


def fold_overhead_ops(fold: str, llm: LLMShape, visual: Sequence[int], hardware: Hardware,
                      options: Optional[RooflineOptions] = None) -> List[OpCost]:
    """The work of the registered fold ``fold`` at every drop that keeps some visual token,
    priced by the function its registry entry names (as :func:`score_overhead_ops`)."""
    from llava.aim.registry import lookup

    entry = lookup(fold, "fold")
    if entry.cost is None:
        return []
    price = _cost_function("fold", fold, entry.cost)
    return price(llm, visual, scoring_layers(visual), hardware, options)


# --- the analysis --------------------------------------------------------------------------


def score_overhead_ops(score: str, llm: LLMShape, tokens_per_layer: Sequence[int], visual: Sequence[int],
                       hardware: Hardware, options: Optional[RooflineOptions] = None, convention: str = "runtime",
                       pagerank_iters: int = 5) -> List[OpCost]:
    """The work of the registered score ``score`` at the layers that rank, priced by the function
    its registry entry names (``llava.aim.registry``: ``cost``, a function of this module); a score
    registered without one (random: a hash per token; none: VTW) costs nothing here. Under the
    paper convention AIM's importance is counted as the paper's overhead table counts it."""
    from llava.aim.registry import lookup

    entry = lookup(score, "score")
    if entry.cost is None:
        return []
    if convention == "paper" and entry.cost == "importance_overhead_ops":
        return paper_importance_overhead_ops(llm, tokens_per_layer, pruning_layers(visual), hardware, options)
    price = _cost_function("score", score, entry.cost)
    extra = {"pagerank_iters": pagerank_iters} if "pagerank_iters" in inspect.signature(price).parameters else {}
    return price(llm, tokens_per_layer, scoring_layers(visual), hardware, options, **extra)


# What a decode selection's cost function may take, by parameter name (llava.aim.registry: ``cost``).
DECODE_COST_ARGUMENTS = ("llm", "kv_lens", "visual", "cfg", "hardware", "options")


def decode_step_of(cfg: AIMConfig, llm: LLMShape, kv_lens: Sequence[int], visual: Sequence[int],
                   hardware: Hardware, options: Optional[RooflineOptions] = None) -> StepCost:
    """The first decode step after the prefill as ``cfg``'s method runs it. A method with a decode
    selection (``MethodSpec.decode``, a registry entry of kind "decode") attends, in layer j, the
    ``attended(kv_lens, visual, cfg)[j]`` keys its entry declares, and its entry's ``cost`` (called
    with the arguments its parameters name of DECODE_COST_ARGUMENTS) prices the selection's work
    in the step; any other method attends its whole cache. No method is special-cased here."""
    from llava.aim.registry import lookup

    name = spec(cfg.method).decode
    if name is None:
        return decode_step_cost(llm, kv_lens, hardware, options)
    entry = lookup(name, "decode")
    attended = [int(k) for k in entry.attended(list(kv_lens), list(visual), cfg)]
    overhead: List[OpCost] = []
    if entry.cost is not None:
        price = _cost_function("decode", name, entry.cost)
        available = dict(zip(DECODE_COST_ARGUMENTS, (llm, list(kv_lens), list(visual), cfg, hardware, options)))
        overhead = price(**_with_arguments(price, available, f"decode {name!r}'s cost"))
    return decode_step_cost(llm, kv_lens, hardware, options, attended, overhead)


def decode_notes(decode: StepCost, kv_lens: Sequence[int]) -> List[str]:
    """A note where the decode step attends fewer keys than the cache holds (a decode selection)."""
    restricted = [layer for layer in decode.layers if layer.keys < int(kv_lens[layer.index]) + 1]
    if not restricted:
        return []
    first, last = restricted[0], restricted[-1]
    return [f"decode step: layers {first.index}..{last.index} attend {first.keys} of their "
            f"{int(kv_lens[first.index]) + 1} keys (a decode selection; K/V read only for those), the KV cache "
            "keeps every entry (its bytes are the whole cache); the selection's own work is in the step"]


# --- a reduction's token flow and cost, from its registry entry -------------------------------


@dataclass(frozen=True)
class TokenFlow:
    """What a config's pre-LLM reduction (its registry entry) hands the LLM for one video."""

    reduction: str  # the registry entry
    stage: str  # what it reads: "projected" or "vision" (llava.aim.registry)
    frames: int
    stage_tokens: int  # T: tokens per frame at that stage
    visual: int  # tokens the LLM receives for the video (newline tokens not included)
    measured: bool  # from a run's measured count (kept_tokens), not the entry's nominal count

    @property
    def reduces(self) -> bool:
        """The reduction removes tokens (so it runs, and its cost counts)."""
        return self.visual < self.frames * self.stage_tokens

    @property
    def per_frame(self) -> Union[int, float]:
        """Tokens per frame (a mean where the reduction spreads them unevenly over frames)."""
        whole, rest = divmod(self.visual, self.frames)
        return whole if rest == 0 else self.visual / self.frames


def _check_kept_tokens(entry: Any, kept_tokens: Any) -> None:
    from llava.aim.registry import REGISTRY

    if entry.bound is None:
        adaptive = sorted(e.name for e in REGISTRY.values() if e.kind == "reduction" and e.bound is not None)
        raise AIMConfigError("kept_tokens (--kept-tokens) is the measured count of a reduction whose count depends "
                             f"on the content ({', '.join(adaptive)}); {entry.name} keeps a fixed count")
    if isinstance(kept_tokens, bool) or not isinstance(kept_tokens, int) or kept_tokens < 1:
        raise AIMConfigError(f"kept_tokens must be a positive integer (tokens per frame), got {kept_tokens!r}")


def _cost_function(kind: str, name: str, cost: str) -> Any:
    """The function of this module named ``cost``, which the registry entry ``name`` (of ``kind``)
    names as its price; a name this module does not define fails loudly."""
    price = globals().get(cost)
    if price is None:
        raise AIMConfigError(f"{kind} {name!r} is priced by {cost!r}, which llava.analysis.roofline does not define")
    return price


def _with_arguments(fn: Any, available: Dict[str, Any], what: str) -> Dict[str, Any]:
    """The arguments of ``available`` that ``fn``'s parameters name; a required one the analyzer
    does not provide fails loudly, naming what it provides."""
    params = inspect.signature(fn).parameters
    required = [n for n, p in params.items() if p.default is p.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in available]
    if required:
        raise AIMConfigError(f"{what}: {getattr(fn, '__name__', fn)} takes {required}, which the analyzer does not "
                             f"provide (it provides {sorted(available)})")
    return {n: available[n] for n in params if n in available}


def token_flow(cfg: AIMConfig, frames: int, tokens_per_frame: int, vision: VisionShape,
               kept_tokens: Optional[int] = None) -> TokenFlow:
    """The tokens ``cfg``'s reduction gives the LLM for ``frames`` frames: its registry entry's
    ``nominal(frames, T, cfg)`` with T at the entry's stage (the projected ``tokens_per_frame``, or
    the vision tower's unpooled patches), or ``frames * kept_tokens`` measured on a run of a
    reduction whose count depends on the content. ``cfg.merge_count`` is the count rule."""
    from llava.aim.registry import lookup

    entry = lookup(reduction_of(cfg), "reduction")
    stage = entry_stages(entry)[0]  # the first it prefers (a family offering only another runs that one)
    stage_tokens = vision.patches if stage == "vision" else tokens_per_frame
    if kept_tokens is not None:
        _check_kept_tokens(entry, kept_tokens)
        return TokenFlow(entry.name, stage, frames, stage_tokens, frames * kept_tokens, True)
    extra = {"vision": vision} if "vision" in inspect.signature(entry.nominal).parameters else {}
    visual = entry.nominal(frames, stage_tokens, cfg, **extra)
    if isinstance(visual, bool) or not isinstance(visual, int) or visual < 0:
        raise AIMConfigError(f"reduction {entry.name!r}: nominal({frames}, {stage_tokens}, cfg) must give a "
                             f"non-negative integer (tokens into the LLM), got {visual!r}")
    return TokenFlow(entry.name, stage, frames, stage_tokens, visual, False)


# Cost functions the paper's overhead table counts its own way (the paper convention uses them).
PAPER_COSTS = {"merge_overhead_ops": "paper_merge_overhead_ops"}
# What a reduction's cost function may take, by parameter name (llava.aim.registry: ``cost``).
REDUCTION_COST_ARGUMENTS = ("frames", "tokens_per_frame", "retention", "channels", "hardware", "options",
                            "merge_count", "vision", "kept", "visual", "cfg", "llm")


def reduction_overhead_ops(flow: TokenFlow, cfg: AIMConfig, llm: LLMShape, vision: VisionShape, hardware: Hardware,
                           options: RooflineOptions, convention: str) -> List[OpCost]:
    """The work of ``cfg``'s reduction, priced by the function its registry entry names, called with
    the arguments its parameters name (REDUCTION_COST_ARGUMENTS: ``tokens_per_frame`` is T at the
    entry's stage, ``kept`` the tokens per frame it keeps, ``visual`` per video, ``channels`` the
    LLM's width, ``merge_count`` the count rule). Nothing when it removes no token or has no cost."""
    from llava.aim.registry import lookup

    cost = lookup(flow.reduction, "reduction").cost
    if cost is None or not flow.reduces:
        return []
    name = PAPER_COSTS.get(cost, cost) if convention == "paper" else cost
    price = _cost_function("reduction", flow.reduction, name)
    available = dict(frames=flow.frames, tokens_per_frame=flow.stage_tokens, retention=cfg.retention,
                     channels=llm.hidden, hardware=hardware, options=options, merge_count=cfg.merge_count,
                     vision=vision, kept=flow.visual // flow.frames, visual=flow.visual, cfg=cfg, llm=llm)
    return price(**_with_arguments(price, available, f"reduction {flow.reduction!r}'s cost"))


def dycoke_overhead_ops(frames: int, tokens_per_frame: int, channels: int, hardware: Hardware,
                        options: Optional[RooflineOptions] = None, cfg=None) -> List[OpCost]:
    """DyCoke's token temporal merging (llava.aim.dycoke) of one video: for each pruned frame, the
    normalisation of it and its reference frame (2 * 3*T*C), the per-position similarities
    (2*T*C), a sort of the T similarities (T * ceil(log2 T) comparisons) and the gather of the
    K kept tokens (reads); whole frames cost nothing. Reads both frames, writes the kept tokens."""
    from llava.aim.dycoke import OFFICIAL_K, settings, ttm_kept_per_frame, ttm_references

    o = options or RooflineOptions()
    t, c, a = tokens_per_frame, channels, o.act_bytes
    pruned = sum(r is not None for r in ttm_references(frames))
    kept = ttm_kept_per_frame(t, settings(cfg)[0] if cfg is not None else OFFICIAL_K)
    ops = [
        _op("dycoke.normalize", 6 * t * c, 2 * t * c * a, hardware),
        _op("dycoke.similarity", 2 * t * c, 2 * t * c * a + t * a, hardware),
        _op("dycoke.sort", t * max(1, math.ceil(math.log2(max(t, 2)))), 2 * t * a, hardware),
        _op("dycoke.gather", kept * c, 2 * kept * c * a, hardware),
    ]
    return [_scaled(op, pruned) for op in ops]


def dycoke_decode_overhead_ops(llm: LLMShape, kv_lens: Sequence[int], cfg: Any, hardware: Hardware,
                               options: Optional[RooflineOptions] = None, score_bytes: float = 4) -> List[OpCost]:
    """DyCoke's decode selection in one decode step (llava.aim.dycoke.decode_select, run by the
    driver every step, on the device): the step token's attention in layer L-1 recomputed from its
    query and the W + 1 cached keys (QK^T 2*nh*(W+1)*d, softmax 5*nh*(W+1), mean over heads
    nh*(W+1); reads K once), the cosine similarity to the previous step's attention over the W
    prefill keys (6*W; the first step has none), and the top-k of the visual keys as the runtime
    does it: a sort of the W entries (W * ceil(log2 W) comparisons), the rank scatter and the
    masks (4*W). Float32 scores."""
    from llava.aim.dycoke import settings

    o = options or RooflineOptions()
    s = score_bytes
    w = int(kv_lens[settings(cfg)[1] - 1])
    nh, d = llm.heads, llm.head_dim
    return [
        _op("dycoke_kv.attention", 2 * nh * (w + 1) * d + 6 * nh * (w + 1),
            nh * d * o.act_bytes + (w + 1) * d * llm.kv_heads * o.kv_bytes + (w + 1) * s, hardware),
        _op("dycoke_kv.similarity", 6 * w, 2 * w * s, hardware),
        _op("dycoke_kv.top_k", w * max(1, math.ceil(math.log2(max(w, 2)))) + 4 * w, 4 * w * s, hardware),
    ]


def prumerge_overhead_ops(vision: VisionShape, kept: int, frames: int, hardware: Hardware,
                          options: Optional[RooflineOptions] = None) -> List[OpCost]:
    """PruMerge on ``frames`` frames of N patches (D-wide keys and features): CLS attention
    (2*N*D + softmax 5*N), key normalisation (3*N*D), the kept tokens' similarities (2*k*N*D),
    and the merge sums (2*(k*32 + N)*D)."""
    o = options or RooflineOptions()
    n, d, a, k = vision.patches, vision.hidden, o.act_bytes, max(kept - 1, 0)
    ops = [
        _op("prumerge.cls_attention", 2 * n * d + 5 * n, 2 * n * d * a, hardware),
        _op("prumerge.similarity", 3 * n * d + 2 * k * n * d, n * d * a + k * n * a, hardware),
        _op("prumerge.merge", 2 * (k * 32 + n) * d, 2 * n * d * a, hardware),
    ]
    return [_scaled(op, frames) for op in ops]


def fastvid_overhead_ops(vision: VisionShape, tokens_per_frame: int, retention: float, channels: int, frames: int,
                         hardware: Hardware, options: Optional[RooflineOptions] = None,
                         cfg: Optional[AIMConfig] = None) -> List[OpCost]:
    """FastVID (``llava.aim.fastvid``) on one video of ``frames`` frames of ``tokens_per_frame``
    ``channels``-wide tokens, segmented the nominal way (``segments`` segments as equal as
    possible, ``llava.aim.fastvid.nominal_tokens``), with ``cfg``'s FastVID knobs (None: the
    official defaults at ``retention``).

    Salience: the attention each of the M patches receives at the vision tower's feature layer,
    recomputed from its q/k (2*M*M*W QK^T + 5*h*M*M softmax + h*M*M means), resized to the
    pooled grid (8 OPs per output). Frame features: the mean of each frame's tokens and
    consecutive cosines (T*C + 5*C per frame). Per frame on N = T - S non-salient tokens: the
    distance matrix (2*N*N*C as a matrix product + 3*N*N), the row sort for the 4 nearest
    (N*N*log2 N), density and delta (3*N*N). Merging a pool of P tokens into K anchors:
    normalise (3*(P + K)*C), similarities (2*P*K*C), best anchor (P*K), combine (2*(P + K)*C).
    """
    from llava.aim.fastvid import FastVIDParams, anchor_counts, frame_budget, nominal_segment_sizes, params_of

    o = options or RooflineOptions()
    p = params_of(cfg) if cfg is not None else FastVIDParams(retention=retention)
    a, C, T, F = o.act_bytes, channels, tokens_per_frame, frames
    m, w, h = vision.patches, vision.hidden, vision.heads
    salient, context = frame_budget(T, p.retention, p.context_share)
    n = T - salient
    ops = [
        _scaled(_op("fastvid.salience", 2 * m * m * w + 6 * h * m * m + 8 * T, 2 * m * w * a + h * m * m * 4, hardware), F),
        _scaled(_op("fastvid.frame_features", T * C + 5 * C, T * C * a, hardware), F),
        _scaled(_op("fastvid.salient_sort", T * max(1.0, math.log2(T)), T * 4, hardware), F),
    ]
    if context == 0 or n == 0:
        return ops
    ops += [
        _scaled(_op("fastvid.distances", 2 * n * n * C + 3 * n * n, n * C * a + n * n * 4, hardware), F),
        _scaled(_op("fastvid.density", n * n * max(1.0, math.log2(n)) + 3 * n * n, 2 * n * n * 4, hardware), F),
    ]
    sizes = nominal_segment_sizes(F, p.segments)
    merge_ops = merge_bytes = 0.0
    for size, count in zip(_per_frame_segment_length(sizes), anchor_counts(sizes, context, p.anchor_stride)):
        if count == 0:
            continue
        k = min(count, n)
        pool = n if count == context else n * size
        merge_ops += 3 * (pool + k) * C + 2 * pool * k * C + pool * k + 2 * (pool + k) * C
        merge_bytes += 2 * pool * C * a + 2 * k * C * a + pool * k * 4
    ops.append(_op("fastvid.merge", merge_ops, merge_bytes, hardware))
    return ops


def _per_frame_segment_length(sizes: Sequence[int]) -> List[int]:
    return [length for length in sizes for _ in range(length)]


def visionzip_overhead_ops(vision: VisionShape, kept: int, frames: int, hardware: Hardware,
                           options: Optional[RooflineOptions] = None, tokens_per_frame: Optional[int] = None,
                           channels: Optional[int] = None) -> List[OpCost]:
    """VisionZip (llava.aim.visionzip) on ``frames`` frames of N patches (D-wide features and
    keys, h heads of d = D / h), keeping ``kept`` tokens (dominant + contextual, split 54:10).

    A CLS tower (CLIP, the official code), on the N unpooled features:

    * the attention read: the CLS query against the N + 1 keys over all heads (2*(N+1)*D), the
      softmax (5*h*(N+1)), the mean over heads (h*N) and the keys' mean over heads ((N+1)*D);
      loads the keys;
    * the ranking of the N attentions (N*log2 N comparisons);
    * the merge: normalising the R non-dominant keys (3*R*d), their similarity to the c
      targets (2*(R-c)*c*d) and its argmax ((R-c)*c), the sums and the division ((R-c)*D + c*D),
      reading the R features and writing the c tokens.

    A tower without CLS (SigLIP, HoliTom's LLaVA-OneVision port), on the T = ``tokens_per_frame``
    pooled, projected tokens (``channels`` wide): the attention every query pays each key
    (2*N*N*D, softmax 5*h*N*N, mean over heads and queries h*N*N; loads the queries and keys),
    the keys' mean over heads (N*D), the 2x2 bilinear pooling of the attention and the keys
    (4*T*(1+d)), then the ranking and the merge as above over T tokens of ``channels``.
    """
    from llava.aim.visionzip import split

    o = options or RooflineOptions()
    n, D, h, a = vision.patches, vision.hidden, vision.heads, o.act_bytes
    d = D // h
    if vision.class_token:
        dominant, c = split(kept, has_cls=True)
        r = n - (dominant - 1)
        read = _op("visionzip.attention", 2 * (n + 1) * D + 5 * h * (n + 1) + h * n + (n + 1) * D,
                   2 * (n + 1) * D * a, hardware)
        t, width = n, D
    else:
        t = tokens_per_frame or n
        width = channels or D
        dominant, c = split(kept)
        r = t - dominant
        read = _op("visionzip.attention", 2 * n * n * D + 5 * h * n * n + h * n * n + n * D + 4 * t * (1 + d),
                   2 * n * D * a, hardware)
    ops = [
        read,
        _op("visionzip.rank", t * max(1.0, math.log2(t)), t * 4, hardware),
        _op("visionzip.merge", 3 * r * d + 2 * (r - c) * c * d + (r - c) * c + (r - c) * width + c * width,
            r * d * a + r * width * a + c * width * a, hardware),
    ]
    return [_scaled(op, frames) for op in ops]


def count_rule(convention: str, merge_count: str = "official") -> str:
    """The merged-count rule a convention counts with: the paper's tables used floor(T * r)
    ("exact"); the runtime convention counts what the runtime keeps (``merge_count``)."""
    return "exact" if convention == "paper" else merge_count


@dataclass
class Analysis:
    """Result of :func:`analyze`. Times in seconds, FLOPs as OPs (multiply-add = 2)."""

    llm: LLMShape
    hardware: Hardware
    options: RooflineOptions
    settings: Dict[str, Any]
    visual_tokens_per_layer: List[int]
    tokens_per_layer: List[int]
    prefill: StepCost
    decode: StepCost  # the first decode step after this prefill
    kv_cache_bytes_per_layer: List[float]
    vision_encoder: ComponentCost
    aim_overhead: ComponentCost
    notes: List[str] = field(default_factory=list)
    vision_shape: Optional[VisionShape] = None

    # headline figures
    @property
    def prefill_flops(self) -> float:
        return self.prefill.flops

    @property
    def prefill_tflops(self) -> float:
        return self.prefill.flops / 1e12

    @property
    def prefill_time_s(self) -> float:
        return self.prefill.time_s

    @property
    def prefill_ms(self) -> float:
        return self.prefill.time_s * 1e3

    @property
    def kv_cache_bytes(self) -> float:
        return sum(self.kv_cache_bytes_per_layer)

    @property
    def pruning_layers(self) -> List[int]:
        return pruning_layers(self.visual_tokens_per_layer)

    def without_aim(self) -> "Analysis":
        """The same input, hardware and options with AIM off (no merging, no pruning)."""
        kwargs = dict(self.settings)
        kwargs.update(retention=1.0, l1=None, l2=None, method="aim", drop_layers=None, drop_ratio=None, kept_tokens=None,
                      method_knobs=None)
        return analyze(self.llm, hardware=self.hardware, options=self.options, vision=self.vision_shape, **_analyze_kwargs(kwargs))

    def to_dict(self, with_ops: bool = False) -> Dict[str, Any]:
        return {
            "llm": self.llm.to_dict(),
            "hardware": self.hardware.to_dict(),
            "options": self.options.to_dict(),
            "settings": dict(self.settings),
            "tokens_per_layer": list(self.tokens_per_layer),
            "visual_tokens_per_layer": list(self.visual_tokens_per_layer),
            "pruning_layers": self.pruning_layers,
            "prefill_flops": self.prefill_flops,
            "prefill_tflops": self.prefill_tflops,
            "prefill_time_s": self.prefill_time_s,
            "prefill_ms": self.prefill_ms,
            "prefill": self.prefill.to_dict(with_ops),
            "decode_step_ms": self.decode.time_s * 1e3,
            "decode_step_flops": self.decode.flops,
            "kv_cache_bytes": self.kv_cache_bytes,
            "kv_cache_bytes_per_layer": list(self.kv_cache_bytes_per_layer),
            "vision_encoder": self.vision_encoder.to_dict(with_ops),
            "aim_overhead": self.aim_overhead.to_dict(with_ops),
            "notes": list(self.notes),
        }


_SETTING_KEYS = ("frames", "tokens_per_frame", "text_tokens", "newline_tokens", "retention", "l1", "l2", "convention",
                 "pagerank_iters", "method", "drop_layers", "drop_ratio", "merge_count", "kept_tokens", "importance",
                 "method_knobs")


def _analyze_kwargs(settings: Dict[str, Any]) -> Dict[str, Any]:
    return {k: settings[k] for k in _SETTING_KEYS}


def _check_count(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AIMConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


# analyze's keyword for each AIMConfig field it takes: the one bridge from a config to the analyzer.
CONFIG_ARGUMENTS = {"retention": "retention", "l1": "l1", "l2": "l2", "method": "method",
                    "drop_layers": "drop_layers", "drop_ratio": "drop_ratio",
                    "pagerank_iters": "pagerank_iters", "merge_count": "merge_count", "importance": "importance"}


def config_arguments(cfg: Any, without: Sequence[str] = ()) -> Dict[str, Any]:
    """``analyze``'s keyword arguments for an AIMConfig whose layers are concrete (not "auto":
    AIMConfig.resolve_layers); ``without``: fields another source gives."""
    if cfg.layers_auto:
        raise ValueError('config_arguments needs concrete l1/l2: resolve "auto" with AIMConfig.resolve_layers')
    out = {keyword: getattr(cfg, name) for name, keyword in CONFIG_ARGUMENTS.items() if name not in without}
    knobs = method_knobs(cfg)
    return dict(out, method_knobs=knobs) if knobs else out


def method_knobs(cfg: Any) -> Dict[str, Any]:
    """The method's own knobs set on ``cfg`` (AIMConfig fields named ``<method>_...``, not None):
    what its token flow and cost may read besides the shared fields."""
    import dataclasses

    from llava.aim.policy import own_knobs

    return own_knobs(cfg.method, {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})


def analyze(
    llm: Union[str, LLMShape, Any] = "qwen2-7b",
    frames: int = 32,
    tokens_per_frame: int = 196,
    text_tokens: int = 100,
    retention: float = 1.0,
    l1: Optional[int] = None,
    l2: Optional[int] = None,
    convention: str = "runtime",
    hardware: Union[str, Hardware] = "nvidia_A100",
    newline_tokens: int = 0,
    options: Optional[RooflineOptions] = None,
    vision: Union[str, VisionShape, None] = None,
    pagerank_iters: int = 5,
    method: str = "aim",
    drop_layers: Optional[Sequence[int]] = None,
    drop_ratio: Optional[float] = None,
    merge_count: str = "official",
    kept_tokens: Optional[int] = None,
    importance: str = "pagerank",
    method_knobs: Optional[Dict[str, Any]] = None,
    **option_kwargs: Any,
) -> Analysis:
    """Roofline prefill cost of the language model on one video (or image) prompt.

    N_j = text_tokens + visual_j, with visual_0 = the tokens the method's pre-LLM reduction gives
    the LLM + newline_tokens and visual_j = ``policy_visual_tokens(cfg, visual_0, L, convention)``
    (the runtime's). ``newline_tokens`` 0 gives the paper's 100 + 32*196; LLaVA-OneVision's runtime
    appends one (visual, prunable) after a video: 1 counts what it executes. ``convention``:
    "runtime" (what the project's model executes) or "paper" (its FLOPs script, one layer earlier).

    The reduction's count is its registry entry's (``nominal``; :func:`token_flow`: merging keeps
    ``merged_token_count(T, retention, rule)`` per frame, the rule being ``merge_count`` in the
    runtime convention and floor(T * retention) in the paper's; PruMerge counts ``kept_tokens``
    measured on a run, else its nominal count) and its work is priced by the function the entry
    names (:func:`reduction_overhead_ops`): no method is special-cased here.

    ``importance`` (AIM's score) is priced by its registry entry (:func:`score_overhead_ops`);
    ``method`` (with ``drop_layers`` / ``drop_ratio``, and ``method_knobs``: the method's own
    AIMConfig fields) selects a policy of llava.aim.policy, counted as executed.

    :class:`RooflineOptions` fields (weight_bytes, ..., include_mlp_add) may replace ``options``.
    """
    shape, hw = get_llm(llm), get_hardware(hardware)
    options = _roofline_options(options, option_kwargs)
    _check_inputs(convention, frames, tokens_per_frame, text_tokens, newline_tokens, pagerank_iters)
    rule = count_rule(convention, merge_count)
    cfg = _analysis_config(shape, convention, rule, retention=retention, l1=l1, l2=l2, method=method,
                           importance=importance, drop_layers=None if drop_layers is None else tuple(drop_layers),
                           drop_ratio=drop_ratio, pagerank_iters=pagerank_iters, **(method_knobs or {}))
    vshape = get_vision(vision, llm)
    flow = token_flow(cfg, frames, tokens_per_frame, vshape, kept_tokens)
    visual = policy_visual_tokens(cfg, flow.visual + newline_tokens, shape.layers, convention)
    tokens = prompt_tokens_per_layer(text_tokens, visual)
    overhead = reduction_overhead_ops(flow, cfg, shape, vshape, hw, options, convention)
    if cfg.pruning:
        overhead += score_overhead_ops(score_of(cfg), shape, tokens, visual, hw, options, convention, pagerank_iters)
    if cfg.pruning and fold_of(cfg) is not None:  # a method folding the dropped tokens into the kept (HoliTom)
        overhead += fold_overhead_ops(fold_of(cfg), shape, visual, hw, options)
    decode = decode_step_of(cfg, shape, tokens, visual, hw, options)
    settings = _settings(cfg, flow, shape, hw, vshape, text_tokens=text_tokens, newline_tokens=newline_tokens,
                         tokens_per_frame=tokens_per_frame, convention=convention, merge_count=merge_count,
                         kept_tokens=kept_tokens, drop_layers=drop_layers, method_knobs=method_knobs)
    return Analysis(
        llm=shape, hardware=hw, options=options, settings=settings,
        visual_tokens_per_layer=visual, tokens_per_layer=tokens, prefill=prefill_cost(shape, tokens, hw, options),
        decode=decode,
        kv_cache_bytes_per_layer=kv_cache_bytes_per_layer(shape, tokens, options.kv_bytes),
        vision_encoder=vision_encoder_cost(vshape, shape, frames, hw, options),
        aim_overhead=ComponentCost("AIM overhead (merging + importance)", tuple(overhead)),
        notes=analysis_notes(convention, bool(overhead), options) + decode_notes(decode, tokens), vision_shape=vshape,
    )


def _roofline_options(options: Optional[RooflineOptions], option_kwargs: Dict[str, Any]) -> RooflineOptions:
    if options is None:
        return RooflineOptions(**option_kwargs)
    return replace(options, **option_kwargs) if option_kwargs else options


def _check_inputs(convention: str, frames: Any, tokens_per_frame: Any, text_tokens: Any, newline_tokens: Any,
                  pagerank_iters: Any) -> None:
    if convention not in CONVENTIONS:
        raise AIMConfigError(f"convention must be one of {list(CONVENTIONS)}, got {convention!r}")
    _check_count("frames", frames, 1)
    _check_count("tokens_per_frame", tokens_per_frame, 1)
    _check_count("text_tokens", text_tokens, 0)
    _check_count("newline_tokens", newline_tokens, 0)
    _check_count("pagerank_iters", pagerank_iters, 1)


def _analysis_config(llm: LLMShape, convention: str, rule: str, **fields: Any) -> AIMConfig:
    """The AIMConfig the analyzer counts (its merge_count is the convention's count rule)."""
    cfg = AIMConfig(merge_count=rule, **fields)
    cfg.check_against_model(llm.layers)
    if convention != "runtime" and spec(cfg.method).schedule != "linear":
        raise AIMConfigError(f"the paper convention is AIM's FLOPs script; {cfg.method} is counted as executed "
                             "(drop --paper-convention)")
    return cfg


def _settings(cfg: AIMConfig, flow: TokenFlow, llm: LLMShape, hw: Hardware, vision: VisionShape,
              **given: Any) -> Dict[str, Any]:
    """The settings an Analysis reports: what was given, and what it resolved to."""
    steps = spec(cfg.method).schedule == "steps"
    return {
        "llm": llm.name, "frames": flow.frames, "tokens_per_frame": given["tokens_per_frame"],
        "tokens_per_frame_kept": flow.per_frame, "text_tokens": given["text_tokens"],
        "newline_tokens": given["newline_tokens"], "visual_tokens": flow.visual + given["newline_tokens"],
        "retention": cfg.retention, "l1": cfg.l1, "l2": cfg.l2, "convention": given["convention"],
        "pagerank_iters": cfg.pagerank_iters, "hardware": hw.name, "vision_tower": vision.name,
        "merge_count": given["merge_count"], "count_rule": cfg.merge_count, "kept_tokens": given["kept_tokens"],
        "method": cfg.method, "drop_layers": None if given["drop_layers"] is None else list(given["drop_layers"]),
        "drop_ratio": cfg.drop_ratio, "score": score_of(cfg), "importance": cfg.importance,
        "reduction": flow.reduction, "reduction_stage": flow.stage,
        "method_knobs": dict(given["method_knobs"]) if given["method_knobs"] else None,
        "resolved_drop_layers": list(drop_layers_for(cfg.method, cfg.drop_layers, llm.layers)) if steps else None,
    }


def analysis_notes(convention: str, overhead: bool, options: RooflineOptions) -> List[str]:
    """The notes every Analysis carries: the reference model's choices, and what the options change."""
    notes = [NOTE_SILU, NOTE_REFERENCE, NOTE_SEPARATE]
    if convention == "paper":
        notes.append("paper convention: the schedule counted one layer earlier and floor(T * retention) tokens "
                     "per frame, as the paper's FLOPs script does")
        if overhead:
            notes.append("paper convention: AIM overhead counted as the paper's overhead table (merging's similarity "
                         "jointly over all frames' tokens, importance as 16 * heads * N^2 per pruning layer); the "
                         "runtime convention counts what the runtime computes (per-frame merging, causal QK^T)")
    if options.flash_attention:
        notes.append("flash-attention variant: qk/softmax/sv fused, no N x N scores in memory (ideal fused-kernel IO)")
    if options.include_mlp_add:
        notes.append("includes the second residual add (mlp_add), as the paper's image table counts it (its video "
                     "tables leave it out)")
    return notes
