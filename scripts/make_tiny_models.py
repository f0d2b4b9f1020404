#!/usr/bin/env python
"""Build the bundled tiny random checkpoints: llava/model/tiny/{tiny-llava-onevision,tiny-llava-1.5}.

Each folder is a complete transformers checkpoint (config, safetensors weights, tokenizer,
image/video processor configs, chat template) written with save_pretrained, so the package
loads it through exactly the code path of a real llava-hf checkpoint. The geometry of the
vision side is the real one (384 px / 14 px patches -> 27x27 -> 14x14 = 196 tokens per video
frame for LLaVA-OneVision; 336 px -> 24x24 = 576 tokens per image for LLaVA-1.5); only the
widths and depths are tiny. Weights are random from a fixed seed: answers are meaningless.

    python scripts/make_tiny_models.py            # rewrite both folders
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
    Qwen2Config,
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
    parser.parse_args()
    tiny_onevision(ROOT / "tiny-llava-onevision")
    tiny_llava15(ROOT / "tiny-llava-1.5")


if __name__ == "__main__":
    main()
