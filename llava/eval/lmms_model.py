"""lmms-eval models ``llava_onevision_aim`` (LLaVA-OneVision, video and image) and
``llava_aim`` (LLaVA-1.5, image), registered through the "lmms_eval.models" entry point.

Data parallel: lmms-eval shards the requests by RANK / WORLD_SIZE itself (and adds padding
requests so that every rank runs as many). So these models never shard: each process loads
one full replica on cuda:LOCAL_RANK and answers every request it is given, padding ones
included, in order, one result per request.
"""

from __future__ import annotations

import logging
import os
from typing import List, Optional

import torch
from lmms_eval.api.instance import GenerationResult
from lmms_eval.api.model import lmms
from tqdm import tqdm

from llava.errors import AIMError, EvalArgumentError, UnsupportedModelError, UnsupportedUsageError
from llava.eval import prompts
from llava.eval.args import (
    DEFAULT_CHECKPOINTS,
    PLUGIN_MODEL_TYPES,
    aim_config_from_model_args,
    loader_args,
    split_model_args,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 128
# generation_kwargs keys used here; tasks add others (e.g. image_aspect_ratio) that only
# LLaVA-NeXT's own code reads.
_GEN_KEYS = ("until", "max_new_tokens", "temperature", "top_p", "top_k", "num_beams", "do_sample")


class _AIMModel(lmms):
    """Shared code; subclasses fix the model family and the default checkpoint."""

    MODEL_TYPE = ""
    PLUGIN_NAME = ""
    DEFAULT_PRETRAINED = ""
    VIDEO = False

    def __init__(self, **model_args) -> None:
        super().__init__()
        raw_loader, raw_aim = split_model_args(model_args)
        self.load_args = loader_args(raw_loader, self.DEFAULT_PRETRAINED)
        aim_config_from_model_args(raw_aim)  # fail on a bad value before loading weights
        self._rank = int(os.environ.get("RANK", 0))
        self._world_size = int(os.environ.get("WORLD_SIZE", 1))
        self._device = _replica_device(self.load_args.device, self.load_args.device_map, self._world_size)
        self._model, self.processor = self._load()
        self.aim_config = aim_config_from_model_args(raw_aim, _num_layers(self._model))
        if self.aim_config.enabled:
            from llava.model.llava_arch import apply_aim

            self._model, self.processor = apply_aim(self._model, self.processor, self.aim_config)
            self.aim_config = self._model.aim_config  # "auto" layers resolved for this model
        logger.info("%s: %s on %s, AIM %s", self.PLUGIN_NAME, self.load_args.pretrained, self._device,
                    self.aim_config.to_dict() if self.aim_config.enabled else "off")

    # -- loading -------------------------------------------------------------------------
    def _load(self):
        from llava.model.builder import load_pretrained_model

        a = self.load_args
        dtype = a.torch_dtype if a.torch_dtype == "auto" else getattr(torch, a.torch_dtype)
        model, processor = load_pretrained_model(
            a.pretrained, aim=None, torch_dtype=dtype, device_map=a.device_map, attn_implementation=a.attn_implementation
        )
        if model.config.model_type != self.MODEL_TYPE:
            other = [name for name, kind in PLUGIN_MODEL_TYPES.items() if kind == model.config.model_type]
            raise UnsupportedModelError(
                f"{a.pretrained!r} is a {model.config.model_type!r} checkpoint but --model {self.PLUGIN_NAME} "
                f"expects {self.MODEL_TYPE!r}; use --model {other[0] if other else 'with a matching checkpoint'}"
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

    def generate_until(self, requests) -> List[str]:
        answers = []
        for request in tqdm(requests, disable=self.rank != 0, desc="llava-aim generate"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            kind, media = self._visuals(doc_to_visual, task, split, doc_id)
            answers.append(self._generate(context, dict(gen_kwargs or {}), kind, media))
        return answers

    def loglikelihood(self, requests) -> list:
        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc="llava-aim loglikelihood"):
            args = request.args
            if len(args) == 2:  # unconditional scores (acc_mutual_info): text only
                context, continuation, kind, media = args[0], args[1], "text", []
            else:
                context, target, doc_to_visual, doc_id, task, split = args
                doc = self.task_dict[task][split][doc_id]
                continuation = target if isinstance(target, str) else target(doc)
                kind, media = self._visuals(doc_to_visual, task, split, doc_id)
            loss, greedy = self._continuation_loss(context, continuation, kind, media)
            # lmms-eval 0.7.x turns a bare (loss, is_greedy) tuple into a string on its way to
            # the task; wrapped in GenerationResult it arrives as the tuple.
            results.append(GenerationResult(text=(loss, greedy)))
        return results

    def generate_until_multi_round(self, requests) -> List[str]:
        raise UnsupportedUsageError(
            f"{self.PLUGIN_NAME} does not implement multi-round generation (generate_until_multi_round); "
            "run single-turn tasks (output_type generate_until or multiple_choice)"
        )

    # -- one request -------------------------------------------------------------------------
    def _visuals(self, doc_to_visual, task, split, doc_id):
        if doc_to_visual is None:
            return "text", []
        doc = self.task_dict[task][split][doc_id]
        try:
            kind, media = prompts.load_visuals(doc_to_visual(doc), self.load_args.max_frames_num,
                                               self.load_args.video_decode_backend, self.load_args.frame_sampling)
        except AIMError as exc:  # say which document the bad media belongs to
            raise type(exc)(f"{task} doc {doc_id}: {exc}") from exc
        if kind == "video" and not self.VIDEO:
            raise UnsupportedUsageError(
                f"{self.PLUGIN_NAME} is an image model (LLaVA-1.5); task {task} gives videos: "
                "use --model llava_onevision_aim with a LLaVA-OneVision checkpoint"
            )
        return kind, media

    def _inputs(self, prompt: str, kind: str, media):
        return prompts.processor_inputs(self.processor, prompt, kind, media, self._device, self._model.dtype)

    def _generate(self, context: str, gen_kwargs: dict, kind: str, media) -> str:
        until, generate_kwargs = _generation_settings(gen_kwargs, self.tokenizer)
        prompt = prompts.user_prompt(self.processor, context, kind, len(media))
        inputs = self._inputs(prompt, kind, media)
        with torch.inference_mode():
            output = self._model.generate(**inputs, **generate_kwargs)
        new_tokens = output[0, inputs["input_ids"].shape[1]:]
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        return prompts.truncate_at_stop(text, until).strip()

    def _continuation_loss(self, context: str, continuation: str, kind: str, media):
        """Mean cross-entropy of the continuation tokens and whether greedy decoding gives them.

        With AIM the forward prunes visual tokens; their logits are zero, but the text
        positions (the last prompt token and the continuation) are exact.
        """
        prompt = prompts.user_prompt(self.processor, context, kind, len(media))
        n = prompts.continuation_length(self.tokenizer, prompt, continuation)
        inputs = self._inputs(prompt + continuation, kind, media)
        with torch.inference_mode():
            logits = self._model(**inputs, logits_to_keep=n + 1).logits
        predicted = logits[0, :-1].float()  # position t predicts token t + 1
        target = inputs["input_ids"][0, -n:]
        loss = torch.nn.functional.cross_entropy(predicted, target)
        greedy = bool((predicted.argmax(dim=-1) == target).all())
        return float(loss), greedy


class LlavaOneVisionAIM(_AIMModel):
    """LLaVA-OneVision (Qwen2) with AIM: video and image tasks."""

    PLUGIN_NAME = "llava_onevision_aim"
    MODEL_TYPE = PLUGIN_MODEL_TYPES[PLUGIN_NAME]
    DEFAULT_PRETRAINED = DEFAULT_CHECKPOINTS["llava_onevision_aim"]
    VIDEO = True


class LlavaAIM(_AIMModel):
    """LLaVA-1.5 (Llama) with AIM: image tasks."""

    PLUGIN_NAME = "llava_aim"
    MODEL_TYPE = PLUGIN_MODEL_TYPES[PLUGIN_NAME]
    DEFAULT_PRETRAINED = DEFAULT_CHECKPOINTS["llava_aim"]
    VIDEO = False


# -- helpers ---------------------------------------------------------------------------------
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
