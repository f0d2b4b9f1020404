"""LLaVA-1.5 (CLIP ViT-L/336 + Llama): merging of each image's tokens.

Each image's projected tokens are merged (a forward hook on the multimodal projector), so the
LLM receives k tokens per image instead of 576; the processor emits k placeholders.
"""

from __future__ import annotations

from typing import Optional, Tuple

from llava.aim.merge import merged_token_count
from llava.model.families.base import FamilyAdapter, reduce_tokens

OFFICIAL_LAYERS_32 = (13, 21)  # official code: retain 1 - (l - 12) / 8 from layer 13 of 32


class Llava15Adapter(FamilyAdapter):
    name = "llava15"
    title = "LLaVA-1.5"
    model_types = ("llava",)
    model_classes = ("LlavaForConditionalGeneration", "LlavaModel")
    processor_class = "LlavaProcessor"
    media = ("image",)
    merged_media = ("image",)
    tiny_models = ("tiny-llava-1.5",)
    processor_methods = ("replace_image_token",)

    def official_layers(self, num_layers: int) -> Optional[Tuple[int, int]]:
        return OFFICIAL_LAYERS_32 if num_layers == 32 else None

    def install_merging(self, inner, runtime) -> None:
        def merge_projected(module, args, output):
            result = reduce_tokens(runtime, output)  # (images, 576, C) -> (images, k, C)
            runtime.record_merge(
                frames=output.shape[0], before=output.shape[1], after=result.tokens.shape[1],
                newline_tokens=0, sources=result.source_index,
            )
            return result.tokens

        runtime.handles.append(inner.multi_modal_projector.register_forward_hook(merge_projected))

    def patch_processor(self, processor, cfg, runtime) -> None:
        stock = processor.replace_image_token

        def replace_image_token(image_inputs, image_idx, **kwargs):
            text = stock(image_inputs, image_idx, **kwargs)
            return processor.image_token * merged_token_count(text.count(processor.image_token), cfg.retention)

        processor.replace_image_token = replace_image_token
