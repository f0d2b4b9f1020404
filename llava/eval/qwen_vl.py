"""lmms-eval models ``qwen2_vl_aim`` (Qwen2-VL), ``qwen2_5_vl_aim`` (Qwen2.5-VL) and
``llava_onevision1_5_aim`` (LLaVA-OneVision-1.5, which uses Qwen2-VL's processors), video and
image tasks, registered through the same "lmms_eval.models" entry point as the LLaVA models.

They differ from the LLaVA plugin models only in how inputs are built:

* ``max_pixels`` / ``min_pixels`` (model_args) bound each frame and image: the processors resize
  to a multiple of 28 px with min_pixels <= h * w <= max_pixels (the official Qwen2-VL run:
  max_pixels=200704, i.e. at most 16 x 16 merged tokens per 2 frames);
* Qwen2.5-VL's temporal positions count seconds (``second_per_grid_ts``): the processor is told
  the sampled frames' rate from the clip's duration, instead of assuming 24 frames per second.

``positions=original|official`` is an AIM model_arg (AIMConfig.positions) like any other.
"""

from __future__ import annotations

import logging
from typing import List, Optional

from llava.eval import prompts
from llava.eval.args import DEFAULT_CHECKPOINTS, PIXEL_ARGS, PLUGIN_MODEL_TYPES, pixel_limits
from llava.eval.lmms_model import _AIMModel

logger = logging.getLogger(__name__)


class _QwenVLAIM(_AIMModel):
    VIDEO = True
    TIME_POSITIONS = False  # whether the model's temporal positions count seconds
    EXTRA_ARGS = PIXEL_ARGS

    def __init__(self, **model_args) -> None:
        self.pixel_limits = pixel_limits({k: model_args[k] for k in PIXEL_ARGS if k in model_args})
        self._durations: List[Optional[float]] = []
        super().__init__(**model_args)  # validates the rest, loads, applies AIM, opens the resume journal
        for sub in (self.processor.image_processor, self.processor.video_processor):
            size = {"shortest_edge": sub.size["shortest_edge"], "longest_edge": sub.size["longest_edge"]}
            if "min_pixels" in self.pixel_limits:
                size["shortest_edge"] = self.pixel_limits["min_pixels"]
            if "max_pixels" in self.pixel_limits:
                size["longest_edge"] = self.pixel_limits["max_pixels"]
            sub.size = size

    def _visuals(self, raw, task, doc_id):
        kind, media = super()._visuals(raw, task, doc_id)
        self._durations = []
        if kind == "video" and self.TIME_POSITIONS:
            from llava.video import video_duration_s

            self._durations = [video_duration_s(p) for p in raw]
        return kind, media

    def _inputs(self, prompt: str, kind: str, media):
        kwargs = {}
        if kind == "video" and self._durations:
            metadata = []
            for frames, seconds in zip(media, self._durations):
                if not seconds:
                    logger.warning("%s: a clip's duration is unknown; its frames are taken as 24 per second",
                                   self.PLUGIN_NAME)
                    seconds = len(frames) / 24.0
                metadata.append({"total_num_frames": len(frames), "fps": len(frames) / seconds})
            kwargs["video_metadata"] = metadata
        return prompts.processor_inputs(self.processor, prompt, kind, media, self._device, self._model.dtype, **kwargs)


class Qwen2VLAIM(_QwenVLAIM):
    """Qwen2-VL with AIM: video and image tasks."""

    PLUGIN_NAME = "qwen2_vl_aim"
    MODEL_TYPE = PLUGIN_MODEL_TYPES[PLUGIN_NAME]
    DEFAULT_PRETRAINED = DEFAULT_CHECKPOINTS[PLUGIN_NAME]


class Qwen2_5_VLAIM(_QwenVLAIM):
    """Qwen2.5-VL with AIM: video and image tasks (temporal positions in seconds)."""

    PLUGIN_NAME = "qwen2_5_vl_aim"
    MODEL_TYPE = PLUGIN_MODEL_TYPES[PLUGIN_NAME]
    DEFAULT_PRETRAINED = DEFAULT_CHECKPOINTS[PLUGIN_NAME]
    TIME_POSITIONS = True


class LlavaOneVision15AIM(_QwenVLAIM):
    """LLaVA-OneVision-1.5 with AIM (transformers >= 5.25): video and image tasks. Its processors are
    Qwen2-VL's (the same pixel limits); its positions are 1-D, so no frame rate is needed."""

    PLUGIN_NAME = "llava_onevision1_5_aim"
    MODEL_TYPE = PLUGIN_MODEL_TYPES[PLUGIN_NAME]
    DEFAULT_PRETRAINED = DEFAULT_CHECKPOINTS[PLUGIN_NAME]
