"""The embedded tiny default Qwen2.5-VL: real architecture, seeded random weights.

Without network access no real Qwen weights can be had, yet the controller,
the VL cache and the tests must exercise the exact code path a real
`Qwen/Qwen2.5-VL-3B-Instruct` takes. So we build a very small model of the
same architecture (vision tower with window attention and a patch merger,
M-RoPE text decoder), a byte-level BPE tokenizer trained locally that carries
the Qwen chat special tokens, and a processor; save all of it as an ordinary
model directory; and from then on load it only through `from_pretrained`,
like any other model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

LOG = logging.getLogger(__name__)

#: Bump when anything below changes the built model, so stale caches are rebuilt.
TINY_VERSION = 1
TINY_SEED = 1234

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: Same layout as Qwen2.5-VL-Instruct's template, reduced to what we use:
#: optional system turn, user turn of images then text, generation prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' or 'video' in item %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: Text the BPE merges are learned from: robot-instruction vocabulary.
_CORPUS = [
    "pick up the red cube and place it in the blue bowl",
    "push the green block to the left of the table",
    "open the drawer, then close the gripper around the handle",
    "move the arm up, down, left, right, forward and backward slowly",
    "stack the yellow cup on top of the white plate",
    "You are a helpful robot assistant. Follow the instruction.",
    "system user assistant image video camera wrist front top side view",
    "0 1 2 3 4 5 6 7 8 9 , . ! ? : ; ' \" ( ) [ ] { } - _ / \\",
]


def default_cache_dir() -> Path:
    """Where first-use builds go: $VLA_CONTROLLER_CACHE, else ~/.cache/vla-controller."""
    env = os.environ.get("VLA_CONTROLLER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vla-controller"


def _build_tokenizer():  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build_processor(tokenizer, min_pixels: int, max_pixels: int):
    from transformers import (
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    image_processor = Qwen2VLImageProcessor(size=size)
    # Required by the processor even for image-only use (transformers 5.x).
    video_processor = Qwen2VLVideoProcessor()
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def _build_config(tokenizer):
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [4, 6, 6],
        },
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=2,
        out_hidden_size=128,
        window_size=56,
        fullatt_block_indexes=[1],
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def build_tiny_model(out_dir: str | Path, *, min_pixels: int, max_pixels: int) -> Path:
    """Build the tiny model + processor and save them as a model directory.

    Writes into a temporary sibling and renames, so a crash mid-build never
    leaves a half-written directory that later loads would trust.
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    LOG.info("building the tiny default Qwen2.5-VL into %s (first use only)", out)
    tokenizer = _build_tokenizer()
    LOG.info("tiny default: tokenizer built (%d tokens)", len(tokenizer))
    config = _build_config(tokenizer)
    torch.manual_seed(TINY_SEED)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    n_params = sum(p.numel() for p in model.parameters())
    LOG.info(
        "tiny default: model initialised (%.2f M parameters, seed %d)", n_params / 1e6, TINY_SEED
    )
    processor = _build_processor(tokenizer, min_pixels, max_pixels)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model dir is an ordinary one
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "tiny_default.json").write_text(
            json.dumps({"version": TINY_VERSION, "seed": TINY_SEED}, indent=2)
        )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    LOG.info("tiny default: saved to %s", out)
    return out


def tiny_model_dir(
    cache_dir: str | Path | None = None, *, min_pixels: int, max_pixels: int
) -> Path:
    """The tiny default's directory, built on first use and reused afterwards."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    tag = hashlib.sha256(f"{TINY_VERSION}:{TINY_SEED}".encode()).hexdigest()[:8]
    out = root / f"tiny-qwen2.5-vl-v{TINY_VERSION}-{tag}"
    if (out / "tiny_default.json").is_file():
        return out
    return build_tiny_model(out, min_pixels=min_pixels, max_pixels=max_pixels)
