"""lmms-eval plugin models, one per model family (``FamilyAdapter.plugin_model``, e.g.
``llava_onevision_aim``; the class named ``FamilyAdapter.plugin_class`` in this module),
registered through the "lmms_eval.models" entry point (llava/eval/registry.py).

Data parallel: lmms-eval shards the requests by RANK / WORLD_SIZE itself (and adds padding
requests so that every rank runs as many). So these models never shard: each process loads
one full replica on cuda:LOCAL_RANK and answers every request it is given, padding ones
included, in order, one result per request.

Batches (``--batch_size N``): consecutive requests whose inputs have the same geometry (video
tasks: the same number of videos and frames; images: the same token count) and the same
generation settings run as one left-padded ``generate``; each answer equals the request's
answer alone (tested). Whatever cannot be batched runs alone, said once in the log.

Every answer carries its efficiency figures (llava.eval.efficiency) and goes to the resume
journal as soon as it is computed (llava.eval.resume).

The classes are derived from the family adapters (:func:`plugin_class`): what differs between
families is the adapter's (``plugin_model_args`` and ``plugin_setup``: the model's own
model_args; ``plugin_input_kwargs``: extra processor inputs per request; ``plugin_batches``,
``fixed_image_size``: batching). A subclass may still override the input building:
``_visuals`` (one request's media, called right before its inputs are built), ``_prompt`` (one
request's chat prompt), ``_inputs`` (one request's processor call) and ``_batch_inputs``
(several requests at once), ``_batch_key`` (which inputs may share a batch). A subclass that
overrides ``_inputs`` but not ``_batch_inputs`` runs one request at a time.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Hashable, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from lmms_eval.api.instance import GenerationResult
from lmms_eval.api.model import lmms
from tqdm import tqdm

from llava.errors import AIMError, EvalArgumentError, UnsupportedModelError, UnsupportedUsageError
from llava.eval import efficiency, prompts
from llava.eval.args import adopt_stock_args, aim_config_from_model_args, loader_args, plugin_args, split_model_args
from llava.eval.resume import ResumeJournal, media_identity, request_key

logger = logging.getLogger(__name__)


def _log_to_stderr() -> None:
    """lmms-eval logs through loguru and configures no logging handler: without one, the
    plugin's INFO lines (resume journal, batching) would be dropped."""
    package = logging.getLogger("llava")
    if not package.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)

DEFAULT_MAX_NEW_TOKENS = 128
# generation_kwargs keys used here; tasks add others (e.g. image_aspect_ratio) that only
# LLaVA-NeXT's own code reads.
_GEN_KEYS = ("until", "max_new_tokens", "temperature", "top_p", "top_k", "num_beams", "do_sample")


class LoglikelihoodAnswer(tuple):
    """(loss, is_greedy) as lmms-eval 0.7.3 needs it.

    Wrapped in ``GenerationResult(text=...)`` it reaches the task unchanged (a bare tuple is
    turned into a string on the way). lmms-eval's response cache cannot replay it (it would
    come back as a string) and calls ``text.strip()`` to decide whether to store it: the empty
    answer keeps it out of that cache; the resume journal keeps it instead.
    """

    def strip(self) -> str:
        return ""


@dataclass
class _Pending:
    """One generate_until request on its way through the batcher."""

    index: int
    key: str
    context: str
    gen_kwargs: Dict[str, Any]
    task: str
    split: str
    doc_id: Any
    raw: List[Any]  # what the task's doc_to_visual gave (paths, images), fetched once
    kind: str = "text"
    media: List[Any] = field(default_factory=list)


class _AIMModel(lmms):
    """Shared code; the subclass of each family (:func:`plugin_class`) fixes its adapter."""

    FAMILY = None  # the FamilyAdapter; PLUGIN_NAME, DEFAULT_PRETRAINED, VIDEO and EXTRA_ARGS follow it
    PLUGIN_NAME = ""
    DEFAULT_PRETRAINED = ""
    VIDEO = False
    # model_args only this plugin model takes (FamilyAdapter.plugin_model_args); every other name
    # must be a loader or AIM setting. All of them are part of the resume setting.
    EXTRA_ARGS: Tuple[str, ...] = ()
    _input_kwargs: Dict[str, Any] = {}  # the family's extra processor inputs for the current request (replaced)

    def __init__(self, **model_args) -> None:
        super().__init__()
        _log_to_stderr()
        self.plugin_args = plugin_args(self.EXTRA_ARGS, model_args)  # before loading: a typo fails fast
        # lmms-eval's stock models' model_args (the official AIM commands): applied, moot or refused
        adopted, notes = adopt_stock_args(self.PLUGIN_NAME, model_args)
        for note in notes:
            logger.info("%s: %s", self.PLUGIN_NAME, note)
        raw_loader, raw_aim = split_model_args({k: v for k, v in adopted.items() if k not in self.EXTRA_ARGS})
        self.load_args = loader_args(raw_loader, self.DEFAULT_PRETRAINED)
        aim_config_from_model_args(raw_aim)  # fail on a bad value before loading weights
        self._rank = int(os.environ.get("RANK", 0))
        self._world_size = int(os.environ.get("WORLD_SIZE", 1))
        self._device = _replica_device(self.load_args.device, self.load_args.device_map, self._world_size)
        self._model, self.processor = self._load()
        self.FAMILY.plugin_setup(self.processor, self.plugin_args)
        self.aim_config = aim_config_from_model_args(raw_aim, _num_layers(self._model))
        if self.aim_config.enabled:
            from llava.model.runtime import apply_aim

            self._model, self.processor = apply_aim(self._model, self.processor, self.aim_config)
            self.aim_config = self._model.aim_config  # "auto" layers resolved for this model
        self.journal = ResumeJournal.for_setting(self.PLUGIN_NAME, model_args, self._rank, self.aim_config)
        self._said: set = set()
        logger.info("%s: %s on %s, AIM %s, batch size %d%s", self.PLUGIN_NAME, self.load_args.pretrained, self._device,
                    self.aim_config.to_dict() if self.aim_config.enabled else "off", self.load_args.batch_size,
                    f", resuming from {self.journal.folder} ({self.journal.loaded} answers)" if self.journal else "")

    # -- loading -------------------------------------------------------------------------
    def _load(self):
        from llava.model.builder import load_pretrained_model

        a = self.load_args
        dtype = a.torch_dtype if a.torch_dtype == "auto" else getattr(torch, a.torch_dtype)
        model, processor = load_pretrained_model(
            a.pretrained, aim=None, torch_dtype=dtype, device_map=a.device_map, attn_implementation=a.attn_implementation,
            use_kernels=a.use_kernels,
        )
        if model.config.model_type not in self.FAMILY.model_types:
            other = [f.plugin_model for f in _families() if model.config.model_type in f.model_types]
            raise UnsupportedModelError(
                f"{a.pretrained!r} is a {model.config.model_type!r} checkpoint but --model {self.PLUGIN_NAME} "
                f"expects {self.FAMILY.model_types[0]!r}; use --model "
                f"{other[0] if other else 'with a matching checkpoint'}"
            )
        if a.device_map is None:
            model.to(self._device)
        else:
            self._device = next(model.parameters()).device
        return model, processor

    # -- lmms-eval's interface -------------------------------------------------------------
    @property
    def model(self):
        return self._model

    @property
    def device(self):
        return self._device

    @property
    def batch_size(self):
        return self.load_args.batch_size

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def generate_until(self, requests) -> List[GenerationResult]:
        results: List[Optional[GenerationResult]] = [None] * len(requests)
        pending: List[_Pending] = []
        for i, request in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            gen_kwargs = dict(gen_kwargs or {})
            raw = self._raw_visuals(doc_to_visual, task, split, doc_id)
            key = self._request_key("generate_until", task, split, doc_id, context, _settings_key(gen_kwargs), raw)
            replayed = self._replay(key)
            if replayed is not None:
                results[i] = GenerationResult(text=replayed[0], token_counts=replayed[1])
            else:
                pending.append(_Pending(i, key, context, gen_kwargs, task, split, doc_id, raw))
        bar = tqdm(total=len(pending), disable=self.rank != 0, desc="llava-aim generate")
        for batch in self._batches(pending):
            for item, result in zip(batch, self._answer(batch)):
                results[item.index] = result
                self._record(item.key, result.text, result.token_counts)
            bar.update(len(batch))
        bar.close()
        self._say_journal(len(requests) - len(pending), len(requests), "generate_until")
        return results

    def loglikelihood(self, requests) -> list:
        results = []
        computed = 0
        for request in tqdm(requests, disable=self.rank != 0, desc="llava-aim loglikelihood"):
            args = request.args
            if len(args) == 2:  # unconditional scores (acc_mutual_info): text only
                context, continuation, doc_to_visual, task, split, doc_id = args[0], args[1], None, "", "", None
            else:
                context, target, doc_to_visual, doc_id, task, split = args
                doc = self.task_dict[task][split][doc_id]
                continuation = target if isinstance(target, str) else target(doc)
            raw = self._raw_visuals(doc_to_visual, task, split, doc_id)
            key = self._request_key("loglikelihood", task, split, doc_id, context, continuation, raw)
            replayed = self._replay(key)
            if replayed is not None:
                results.append(GenerationResult(text=LoglikelihoodAnswer(replayed[0]), token_counts=replayed[1]))
                continue
            kind, media = self._visuals(raw, task, doc_id)
            (loss, greedy), counts = self._continuation_loss(context, continuation, kind, media)
            computed += 1
            # lmms-eval 0.7.x turns a bare (loss, is_greedy) tuple into a string on its way to
            # the task; wrapped in GenerationResult it arrives as the tuple.
            answer = LoglikelihoodAnswer((loss, greedy))
            results.append(GenerationResult(text=answer, token_counts=counts))
            self._record(key, [loss, greedy], counts)
        self._say_journal(len(requests) - computed, len(requests), "loglikelihood")
        return results

    def generate_until_multi_round(self, requests) -> List[str]:
        raise UnsupportedUsageError(
            f"{self.PLUGIN_NAME} does not implement multi-round generation (generate_until_multi_round); "
            "run single-turn tasks (output_type generate_until or multiple_choice)"
        )

    # -- media ------------------------------------------------------------------------------
    def _raw_visuals(self, doc_to_visual, task, split, doc_id) -> List[Any]:
        """What the task's doc_to_visual returns for the document (paths, images), unloaded."""
        if doc_to_visual is None:
            return []
        return list(doc_to_visual(self.task_dict[task][split][doc_id]) or [])

    def _load_visuals(self, raw: Sequence[Any], task, doc_id):
        """("video" | "image" | "text", decoded media) for a request's raw visuals."""
        try:
            kind, media = prompts.load_visuals(raw, self.load_args.max_frames_num, self.load_args.video_decode_backend,
                                               self.load_args.frame_sampling)
        except AIMError as exc:  # say which document the bad media belongs to
            raise type(exc)(f"{task} doc {doc_id}: {exc}") from exc
        if kind == "video" and not self.VIDEO:
            video = next(f for f in _families() if f.plugin_video)
            raise UnsupportedUsageError(
                f"{self.PLUGIN_NAME} is an image model ({self.FAMILY.title}); task {task} gives videos: "
                f"use --model {video.plugin_model} with a {video.title} checkpoint"
            )
        return kind, media

    def _visuals(self, raw: Sequence[Any], task, doc_id):
        """One request's (kind, media) from its raw visuals: the hook a subclass extends. Called
        right before that request's inputs are built; notes the family's extra processor inputs
        for it (FamilyAdapter.plugin_input_kwargs)."""
        kind, media = self._load_visuals(raw, task, doc_id)
        self._input_kwargs = self.FAMILY.plugin_input_kwargs(kind, raw, media, logger.warning)
        return kind, media

    # -- inputs (what a family subclass overrides) ------------------------------------------
    def _prompt(self, context: str, kind: str, media) -> str:
        return prompts.user_prompt(self.processor, context, kind, len(media))

    def _inputs(self, prompt: str, kind: str, media):
        return prompts.processor_inputs(self.processor, prompt, kind, media, self._device, self._model.dtype,
                                        **self._input_kwargs)

    def _batch_inputs(self, prompt_list: List[str], kind: str, media_list: List[List[Any]]):
        return prompts.batch_processor_inputs(self.processor, prompt_list, kind, media_list, self._device,
                                              self._model.dtype)

    def _batch_key(self, kind: str, media) -> tuple:
        """Requests with equal keys produce inputs of the same geometry: a video's frame count
        fixes its tokens (every frame is resized to the tower's size); an image's token count
        follows its size (any-resolution grids)."""
        if kind == "video":
            return ("video", tuple(len(v) for v in media))
        if kind == "image" and self.FAMILY.fixed_image_size:  # any size gives the same token count
            return ("image", len(media))
        if kind == "image":
            return ("image", tuple(getattr(img, "size", None) for img in media))
        return ("text",)

    # -- batching ---------------------------------------------------------------------------
    def _batchable(self, item: _Pending) -> Optional[str]:
        """None if the request may share a batch, else why not (said once in the log)."""
        overridden = type(self)._inputs is not _AIMModel._inputs and type(self)._batch_inputs is _AIMModel._batch_inputs
        if overridden or not self.FAMILY.plugin_batches:
            return f"{type(self).__name__} builds its inputs one request at a time"
        _, kwargs = _generation_settings(item.gen_kwargs, self.tokenizer)
        if kwargs["do_sample"]:
            return "sampling (do_sample / temperature > 0) draws different random numbers in a batch"
        if kwargs["num_beams"] > 1:
            return "beam search"
        return None

    def _batches(self, pending: List[_Pending]) -> Iterator[List[_Pending]]:
        """Requests grouped into batches (``plan_batches``); media are decoded as requests
        arrive, so at most one open batch per key is held."""

        def keyed():
            for item in pending:  # plan_batches hands a single request out before the next one loads
                item.kind, item.media = self._visuals(item.raw, item.task, item.doc_id)
                # at batch size 1 plan_batches sends every request alone: nothing to check or say
                reason = self._batchable(item) if self.load_args.batch_size > 1 else None
                if reason is not None:
                    self._say_once(f"{self.PLUGIN_NAME}: answering one request at a time: {reason}")
                key = None if reason else (self._batch_key(item.kind, item.media), _settings_key(item.gen_kwargs))
                yield item, key

        return plan_batches(keyed(), self.load_args.batch_size)

    def _answer(self, batch: List[_Pending]) -> List[GenerationResult]:
        if len(batch) == 1:
            return self._generate_batch(batch)
        try:
            return self._generate_batch(batch)
        except (AIMError, RuntimeError, ValueError, TypeError) as exc:  # torch's OOM is a RuntimeError
            self._say_once(f"{self.PLUGIN_NAME}: a batch of {len(batch)} could not run together "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); answering those one at a time")
            if self._device.type == "cuda":
                torch.cuda.empty_cache()
            return [self._generate_batch([item])[0] for item in batch]

    # -- one generate call ------------------------------------------------------------------
    def _generate_batch(self, batch: List[_Pending]) -> List[GenerationResult]:
        until, generate_kwargs = _generation_settings(batch[0].gen_kwargs, self.tokenizer)
        prompt_list = [self._prompt(item.context, item.kind, item.media) for item in batch]
        if len(batch) == 1:
            inputs = self._inputs(prompt_list[0], batch[0].kind, batch[0].media)
        else:
            inputs = self._batch_inputs(prompt_list, batch[0].kind, [item.media for item in batch])
        with torch.inference_mode(), efficiency.ForwardProbe(self._model, self._device) as probe:
            output = self._model.generate(**inputs, **generate_kwargs)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        lengths = _generated_lengths(new_tokens, self.tokenizer, self._model)
        counts = efficiency.generation_counts(self._model, inputs, lengths, probe)
        efficiency.log_batch(counts, probe)
        results = []
        for row, sample_counts in zip(new_tokens, counts):
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            results.append(GenerationResult(text=prompts.truncate_at_stop(text, until).strip(),
                                            token_counts=sample_counts))
        return results

    def _continuation_loss(self, context: str, continuation: str, kind: str, media):
        """((mean cross-entropy of the continuation tokens, whether greedy decoding gives
        them), efficiency figures of the forward).

        With AIM the forward prunes visual tokens; their logits are zero, but the text
        positions (the last prompt token and the continuation) are exact.
        """
        prompt = self._prompt(context, kind, media)
        n = prompts.continuation_length(self.tokenizer, prompt, continuation)
        inputs = self._inputs(prompt + continuation, kind, media)
        with torch.inference_mode(), efficiency.ForwardProbe(self._model, self._device) as probe:
            logits = self._model(**inputs, logits_to_keep=n + 1).logits
        predicted = logits[0, :-1].float()  # position t predicts token t + 1
        target = inputs["input_ids"][0, -n:]
        loss = torch.nn.functional.cross_entropy(predicted, target)
        greedy = bool((predicted.argmax(dim=-1) == target).all())
        return (float(loss), greedy), efficiency.forward_counts(self._model, inputs, probe)

    # -- resume journal ---------------------------------------------------------------------
    def _request_key(self, kind, task, split, doc_id, context, extra, raw) -> str:
        return request_key(kind, task, split, doc_id, context, extra, [media_identity(m) for m in raw])

    def _replay(self, key: str):
        if self.journal is None:
            return None
        record = self.journal.get(key)
        if record is None:
            return None
        counts = efficiency.EfficiencyCounts.from_dict({**(record.get("counts") or {}), "from_resume_journal": True})
        return record["response"], counts

    def _record(self, key: str, response, counts) -> None:
        if self.journal is not None:
            self.journal.put(key, response, counts.to_dict() if counts is not None else None)

    def _say_journal(self, served: int, total: int, kind: str) -> None:
        if self.journal is not None:
            logger.info("%s: %d of %d %s requests answered from the resume journal, %d computed", self.PLUGIN_NAME,
                        served, total, kind, total - served)

    def _say_once(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            logger.warning(message)


def plugin_class(family) -> type:
    """The lmms-eval model class of a family adapter (named ``family.plugin_class``)."""
    return type(family.plugin_class, (_AIMModel,), {
        "__doc__": f"{family.title} with AIM: {' and '.join(family.media)} tasks.",
        "__module__": __name__,
        "FAMILY": family,
        "PLUGIN_NAME": family.plugin_model,
        "DEFAULT_PRETRAINED": family.default_checkpoint,
        "VIDEO": family.plugin_video,
        "EXTRA_ARGS": tuple(family.plugin_model_args),
    })


def _families():
    from llava.model.families import FAMILIES

    return [family for family in FAMILIES if family.plugin_model]


# plugin model id -> class; each class is also this module's attribute of its name (the class
# path registry.py gives lmms-eval, e.g. llava.eval.lmms_model.LlavaOneVisionAIM)
PLUGIN_CLASSES: Dict[str, type] = {family.plugin_model: plugin_class(family) for family in _families()}
globals().update({cls.__name__: cls for cls in PLUGIN_CLASSES.values()})


# -- helpers ---------------------------------------------------------------------------------
def plan_batches(keyed: Iterable[Tuple[Any, Optional[Hashable]]], size: int) -> Iterator[List[Any]]:
    """Batches of at most ``size`` items of equal key, each batch in arrival order; an item
    with key None goes alone. A batch is handed out as soon as it is full (or, for an item
    alone, at once); what is left over goes out at the end, oldest key first."""
    open_batches: Dict[Hashable, List[Any]] = {}
    for item, key in keyed:
        if key is None or size == 1:
            yield [item]
            continue
        group = open_batches.setdefault(key, [])
        group.append(item)
        if len(group) == size:
            yield open_batches.pop(key)
    yield from open_batches.values()


def _replica_device(device: str, device_map: Optional[str], world_size: int) -> torch.device:
    """Where this process's replica lives: cuda:LOCAL_RANK under data parallelism."""
    if device_map is not None:
        if world_size > 1:
            raise EvalArgumentError(
                f"device_map={device_map!r} spreads one model over several GPUs, but {world_size} processes "
                "each load a full replica on cuda:LOCAL_RANK: drop device_map, or run one process"
            )
        return torch.device("cpu")  # replaced by the first parameter's device after loading
    if not device.startswith("cuda"):
        from llava.resources import resolve_device

        return resolve_device(device, flag="device")  # a typo: one line, not a traceback from model.to
    if not torch.cuda.is_available():
        raise EvalArgumentError(f"device={device!r} but CUDA is not available here; pass --device cpu (DEVICE=cpu)")
    if world_size > 1:
        local = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(local)
        return local
    return torch.device(device)


def _num_layers(model) -> int:
    from llava.model.builder import num_decoder_layers

    return num_decoder_layers(model)


def _settings_key(gen_kwargs: dict) -> str:
    """The generation settings that decide an answer, as a canonical string."""
    return json.dumps({k: gen_kwargs.get(k) for k in _GEN_KEYS if k in gen_kwargs}, sort_keys=True, default=str)


def _generated_lengths(new_tokens: torch.Tensor, tokenizer, model) -> List[int]:
    """Tokens each row generated: up to and including its first end-of-sequence token (the rest
    of a finished row of a batch is padding)."""
    stop = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        stop.update(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    lengths = []
    for row in new_tokens.tolist():
        n = len(row)
        for i, token in enumerate(row):
            if token in stop:
                n = i + 1
                break
        lengths.append(n)
    return lengths


def _generation_settings(gen_kwargs: dict, tokenizer):
    """(stop strings, keyword arguments of generate()) from a task's generation_kwargs."""
    ignored = sorted(k for k in gen_kwargs if k not in _GEN_KEYS)
    if ignored:
        logger.debug("ignoring generation_kwargs %s", ignored)
    until = gen_kwargs.get("until") or []
    if isinstance(until, str):
        until = [until]
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    do_sample = bool(gen_kwargs.get("do_sample", False)) or temperature > 0
    kwargs = {
        "max_new_tokens": int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
        "do_sample": do_sample,
        "num_beams": int(gen_kwargs.get("num_beams") or 1),
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    }
    if do_sample:
        kwargs["temperature"] = temperature if temperature > 0 else 1.0
        for key in ("top_p", "top_k"):
            if gen_kwargs.get(key) is not None:
                kwargs[key] = gen_kwargs[key]
    return list(until), kwargs
