#!/usr/bin/env python
"""Build the bundled tiny random checkpoints in llava/model/tiny/: tiny-llava-onevision,
tiny-llava-1.5, tiny-qwen2-vl, tiny-qwen2.5-vl, tiny-qwen3-vl, tiny-qwen3-vl-moe, tiny-llava-onevision-1.5
(this one needs transformers >= 5.25, the first release with LLaVA-OneVision-1.5).

Each folder is a complete transformers checkpoint (config, safetensors weights, tokenizer,
image/video processor configs, chat template) written with save_pretrained, so the package
loads it through exactly the code path of a real llava-hf checkpoint. The geometry of the
vision side is the real one (384 px / 14 px patches -> 27x27 -> 14x14 = 196 tokens per video
frame for LLaVA-OneVision; 336 px -> 24x24 = 576 tokens per image for LLaVA-1.5; Qwen2-VL and
Qwen2.5-VL: 14 px patches, 2 frames per temporal patch, 2x2 patch merger, the checkpoints'
pixel limits, M-RoPE sections in the 7B models' proportions; Qwen3-VL: 16 px patches, the
DeepStack mergers after the first vision blocks, interleaved M-RoPE); only the widths and depths
are tiny. Weights are random from a fixed seed: answers are meaningless.

    python scripts/make_tiny_models.py                    # rewrite every folder
    python scripts/make_tiny_models.py tiny-qwen2-vl      # only the named ones
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
    SiglipVisionConfig,
)

ROOT = Path(__file__).resolve().parents[1] / "llava" / "model" / "tiny"
SEED = 1234
VOCAB_SIZE = 1024

# Our own rendering of each family's prompt format (the llava-hf processors' layout):
# Qwen2 / LLaVA-OneVision: "<|im_start|>user <video>\nQ<|im_end|>\n<|im_start|>assistant\n".
QWEN2_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + ' ' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] if part['type'] == 'image' -%}{{- '<image>' -}}{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'video' -%}{{- '<video>' -}}{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}"
    "{%- if message['role'] == 'assistant' -%}{{- part['text'] -}}{%- else -%}{{- '\\n' + part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
# Vicuna-style LLaVA-1.5: "USER: <image>\nQ ASSISTANT:".
LLAMA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] + ' ' -}}{%- endfor -%}"
    "{%- else -%}"
    "{{- message['role'].upper() + ': ' -}}"
    "{%- for part in message['content'] if part['type'] == 'image' -%}{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] + ' ' -}}{%- endfor -%}"
    "{%- if message['role'] == 'assistant' -%}{{- '</s>' -}}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

# Qwen2-VL / Qwen2.5-VL chat format (our own rendering of it): a default system turn, then each
# turn as "<|im_start|>role\n...<|im_end|>\n" with every visual item in place as
# "<|vision_start|><|image_pad|><|vision_end|>" (or <|video_pad|>), the processor expanding the pad.
QWEN_VL_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)
QWEN_VL_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# The Qwen2-VL-7B-Instruct / Qwen2.5-VL-7B-Instruct pixel limits (one frame or image is resized
# to a multiple of 28 px with min_pixels <= h * w <= max_pixels).
QWEN_VL_MIN_PIXELS, QWEN_VL_MAX_PIXELS = 56 * 56, 28 * 28 * 16384

CORPUS_WORDS = (
    "a an the is are was were be what which who where when why how does do did can could "
    "video image frame scene person people man woman child dog cat car ball red green blue "
    "yellow white black left right top bottom moving moves runs walks holds picks opens "
    "closes kitchen table chair door window outside inside room street tree sky water "
    "question answer option options choose best describe happens first then after before "
    "number count many one two three four five yes no not color shape square circle "
    "triangle background object objects camera clip shown show visible appear appears "
    "please answer with the letter of the correct option A B C D E . , ? ! : ; ( ) 0 1 2 3"
).split()


def corpus():
    import random

    rng = random.Random(SEED)
    for _ in range(4000):
        yield " ".join(rng.choice(CORPUS_WORDS) for _ in range(rng.randint(3, 16)))


def build_tokenizer(special_tokens, **named) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=named.get("unk_token")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(special_tokens),
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.add_special_tokens(special_tokens)
    # Left padding, as batched generation with decoder-only models needs.
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", **named)


def tiny_onevision(out: Path) -> None:
    tokenizer = build_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as Qwen2-7B (28 heads, 4 kv heads)
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=384, patch_size=14,
    )
    config = LlavaOnevisionConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=[[384, 384], [384, 768], [768, 384], [768, 768]],
    )
    torch.manual_seed(SEED)
    model = LlavaOnevisionForConditionalGeneration(config)
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(
            image_grid_pinpoints=config.image_grid_pinpoints
        ),
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(),
        num_image_tokens=(384 // 14) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=QWEN2_CHAT_TEMPLATE,
    )
    _save(model, processor, out)


def tiny_llava15(out: Path) -> None:
    tokenizer = build_tokenizer(
        ["<unk>", "<s>", "</s>", "<image>", "<pad>"],
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=4,  # multi-head attention, as Vicuna-7B
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        image_size=336, patch_size=14, projection_dim=32,
    )
    config = LlavaConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=576,
    )
    torch.manual_seed(SEED)
    model = LlavaForConditionalGeneration(config)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAMA_CHAT_TEMPLATE,
    )
    _save(model, processor, out)


def _qwen_vl_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer(
        QWEN_VL_SPECIAL_TOKENS,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>",
        },
    )


def _qwen_vl_text_config(tokenizer) -> dict:
    # head_dim 16 -> 8 rotary frequency pairs split (t, h, w) = (2, 3, 3), the proportions of
    # the 7B models' (16, 24, 24) of 64; grouped-query attention as Qwen2-7B (28 heads, 4 kv).
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        tie_word_embeddings=False,
        use_sliding_window=False,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )


def _qwen_vl_token_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )


def _qwen_vl_processor(cls, tokenizer):
    pixels = dict(min_pixels=QWEN_VL_MIN_PIXELS, max_pixels=QWEN_VL_MAX_PIXELS)
    return cls(
        image_processor=Qwen2VLImageProcessor(patch_size=14, temporal_patch_size=2, merge_size=2, **pixels),
        tokenizer=tokenizer,
        # cap_pixels_per_frame=False: the current default, said explicitly (transformers warns otherwise)
        video_processor=Qwen2VLVideoProcessor(patch_size=14, temporal_patch_size=2, merge_size=2,
                                              cap_pixels_per_frame=False),
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )


def tiny_qwen2_vl(out: Path) -> None:
    tokenizer = _qwen_vl_tokenizer()
    vision = dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=14,
                  temporal_patch_size=2, spatial_merge_size=2)
    config = Qwen2VLConfig(text_config=_qwen_vl_text_config(tokenizer), vision_config=vision,
                           **_qwen_vl_token_ids(tokenizer))
    torch.manual_seed(SEED)
    model = Qwen2VLForConditionalGeneration(config)
    _save(model, _qwen_vl_processor(Qwen2VLProcessor, tokenizer), out)


def tiny_qwen2_5_vl(out: Path) -> None:
    tokenizer = _qwen_vl_tokenizer()
    # Window attention over 112 px (8x8 patches) in block 0, full attention in block 1, as the
    # 7B tower alternates them; 2 temporal position steps per second of video as the 7B model.
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                  temporal_patch_size=2, spatial_merge_size=2, window_size=112, fullatt_block_indexes=[1],
                  tokens_per_second=2)
    config = Qwen2_5_VLConfig(text_config=_qwen_vl_text_config(tokenizer), vision_config=vision,
                              **_qwen_vl_token_ids(tokenizer))
    torch.manual_seed(SEED)
    model = Qwen2_5_VLForConditionalGeneration(config)
    _save(model, _qwen_vl_processor(Qwen2_5_VLProcessor, tokenizer), out)


def _qwen3_vl_parts():
    """(tokenizer, text config, vision config, processor) shared by the dense and MoE Qwen3-VL."""
    tokenizer = _qwen_vl_tokenizer()
    text = _qwen_vl_text_config(tokenizer)
    text.pop("use_sliding_window")
    # Interleaved M-RoPE over 8 frequency pairs in the proportions of the checkpoints' (24, 20, 20).
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [4, 2, 2]}
    text["head_dim"] = 16
    # 4 blocks, DeepStack mergers after blocks 0, 1, 2 (the checkpoints: 8, 16, 24 of 27).
    vision = dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                  temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=256,
                  deepstack_visual_indexes=[0, 1, 2])
    pixels = dict(min_pixels=QWEN_VL_MIN_PIXELS, max_pixels=QWEN_VL_MAX_PIXELS)
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, temporal_patch_size=2, merge_size=2, **pixels),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(patch_size=16, temporal_patch_size=2, merge_size=2,
                                              cap_pixels_per_frame=False),
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )
    return tokenizer, text, vision, processor


def tiny_qwen3_vl(out: Path) -> None:
    tokenizer, text, vision, processor = _qwen3_vl_parts()
    config = Qwen3VLConfig(text_config=text, vision_config=vision, **_qwen_vl_token_ids(tokenizer))
    torch.manual_seed(SEED)
    _save(Qwen3VLForConditionalGeneration(config), processor, out)


def tiny_qwen3_vl_moe(out: Path) -> None:
    tokenizer, text, vision, processor = _qwen3_vl_parts()
    # 4 experts, top-2, every layer sparse (decoder_sparse_step 1) as the checkpoints.
    text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1,
                mlp_only_layers=[])
    config = Qwen3VLMoeConfig(text_config=text, vision_config=vision, **_qwen_vl_token_ids(tokenizer))
    torch.manual_seed(SEED)
    _save(Qwen3VLMoeForConditionalGeneration(config), processor, out)


def tiny_onevision15(out: Path) -> None:
    """LLaVA-OneVision-1.5: RICE tower (a CLS token per frame, 2-D RoPE, 14 px patches, no temporal
    patch: one grid step per frame) + 2x2 merger + Qwen3 (1-D RoPE, q/k norms), prompted as Qwen2-VL
    (vision_start, pads, vision_end) with the Qwen2-VL image / video processors."""
    from transformers import Exaone4_5_Processor, LlavaOnevision15Config, LlavaOnevision15ForConditionalGeneration

    tokenizer = _qwen_vl_tokenizer()
    text = _qwen_vl_text_config(tokenizer)
    text.pop("use_sliding_window")
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0}
    text.update(model_type="qwen3", head_dim=16)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                  out_hidden_size=text["hidden_size"])
    config = LlavaOnevision15Config(text_config=text, vision_config=vision, **_qwen_vl_token_ids(tokenizer))
    torch.manual_seed(SEED)
    model = LlavaOnevision15ForConditionalGeneration(config)
    pixels = dict(min_pixels=QWEN_VL_MIN_PIXELS, max_pixels=QWEN_VL_MAX_PIXELS)
    processor = Exaone4_5_Processor(
        image_processor=Qwen2VLImageProcessor(patch_size=14, temporal_patch_size=1, merge_size=2, **pixels),
        tokenizer=tokenizer,
        # each frame within the image limits (small test clips are not upscaled to the video default's 100k px)
        video_processor=Qwen2VLVideoProcessor(patch_size=14, temporal_patch_size=1, merge_size=2,
                                              size={"shortest_edge": QWEN_VL_MIN_PIXELS,
                                                    "longest_edge": QWEN_VL_MAX_PIXELS},
                                              cap_pixels_per_frame=False),
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )
    _save(model, processor, out)


BUILDERS = {
    "tiny-llava-onevision": tiny_onevision,
    "tiny-llava-1.5": tiny_llava15,
    "tiny-qwen2-vl": tiny_qwen2_vl,
    "tiny-qwen2.5-vl": tiny_qwen2_5_vl,
    "tiny-qwen3-vl": tiny_qwen3_vl,
    "tiny-qwen3-vl-moe": tiny_qwen3_vl_moe,
    "tiny-llava-onevision-1.5": tiny_onevision15,
}


def _save(model, processor, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.2f} MB, {sum(p.numel() for p in model.parameters()):,} parameters)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", choices=[[]] + list(BUILDERS), metavar="NAME",
                        help=f"models to build (default: all of {', '.join(BUILDERS)})")
    names = parser.parse_args().names or list(BUILDERS)
    for name in names:
        BUILDERS[name](ROOT / name)


if __name__ == "__main__":
    main()
