"""Qwen2.5-VL feature encoder: the ONE place preprocessing and pooling live.

The real-time path (`QwenVLAPolicy.encode_vl`) and the training-time VL cache
(`policies.vl_cache`) both call `VLEncoder.encode`, so the feature the action
expert sees at run time is computed exactly as the one it was trained on.
The encoding is split into `preprocess` (CPU: resizing, chat template,
tokenising) and `forward` (model + pooling) so the benchmark can time each.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.errors import PolicyConfigError, PolicyError
from policies.qwen_vla.config import Preprocessing

LOG = logging.getLogger(__name__)

Sample = tuple[Sequence[np.ndarray], str]

#: Weight files that are pickles: loading one can run arbitrary code, so they
#: are never loaded, whatever torch's `weights_only` would do.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_weight_files(root: Path) -> None:
    """Refuse a model directory whose weights are pickles, missing or corrupt, naming the file.

    Reads only the safetensors headers (which also checks that each header's
    offsets cover the file exactly): cheap even for a 3B model, and done
    before `from_pretrained` so the error is ours, one line, not a traceback
    from deep inside transformers.
    """
    from safetensors import SafetensorError, safe_open

    files = sorted(p for p in root.iterdir() if p.is_file())
    weights = [p for p in files if p.name.endswith(".safetensors")]
    pickles = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
    if not weights:
        if pickles:
            raise PolicyConfigError(
                f"VL model {root}: its weights are pickle files ({', '.join(pickles)}), which are"
                " never loaded (unpickling can run code); convert them to safetensors"
            )
        raise PolicyConfigError(f"VL model {root}: no *.safetensors weight files")
    if pickles:
        LOG.info("VL model %s: ignoring pickle files %s (safetensors only)", root, pickles)
    for path in weights:
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise PolicyConfigError(
                f"VL model {root}: {path.name} is corrupt or unreadable: {exc}"
            ) from None


def masked_mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` (B, S, H) over the positions where the mask is 1 -> (B, 1, H).

    Computed in float32 whatever the model's dtype, and padding never enters
    the mean: a padded batch pools to the same features as its samples alone.
    """
    mask = attention_mask.to(device=hidden.device, dtype=torch.float32).unsqueeze(-1)
    summed = (hidden.to(torch.float32) * mask).sum(dim=1, keepdim=True)
    count = mask.sum(dim=1, keepdim=True).clamp_min(1.0)
    return summed / count


def _to_pil(image: np.ndarray, index: int):
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise PolicyError(
            f"image {index}: expected an RGB uint8 array (H, W, 3), got {arr.dtype} {arr.shape}"
        )
    return Image.fromarray(arr, mode="RGB")


def resolve_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    """bf16 on CUDA, float32 on CPU, unless asked otherwise."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            dtype
        ]
    except KeyError:
        raise PolicyConfigError(
            f"dtype {dtype!r} is not one of 'auto', 'float32', 'bfloat16', 'float16'"
        ) from None


def check_model_ref(ref: str | Path) -> tuple[str, dict[str, Any]]:
    """A model directory (weights checked) or a hub id -> (ref, `from_pretrained` kwargs).

    Cheap (no weights read), so a policy can call it when it is configured,
    before the controller connects to anything.
    """
    ref = str(ref)
    local = Path(ref).expanduser()
    if local.is_dir():
        check_weight_files(local)
        return str(local), {}
    if local.exists() or ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise PolicyConfigError(f"VL model {ref!r}: no such model directory")
    return ref, {"local_files_only": True}


class VLEncoder:
    """A loaded Qwen2.5-VL model + processor turning images + text into a pooled feature.

    Owns its model: only the VL worker thread calls it. `forward` runs under
    `torch.inference_mode()`, with bf16 autocast on CUDA and plain float32 on CPU.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        preprocessing: Preprocessing,
        device: torch.device,
        ref: str,
    ) -> None:
        self.model = model
        self.processor = processor
        self.preprocessing = preprocessing
        self.device = device
        self.ref = ref
        self._fingerprint: str | None = None
        # Right padding: with a causal model real tokens never see the pads.
        self.processor.tokenizer.padding_side = "right"
        # The processor's own resize must not undo the bounds applied by
        # qwen_vl_utils: give it the same bounds.
        ip = self.processor.image_processor
        ip.size = {
            "shortest_edge": preprocessing.min_pixels,
            "longest_edge": preprocessing.max_pixels,
        }
        for name in ("min_pixels", "max_pixels"):
            if hasattr(ip, name):
                setattr(ip, name, getattr(preprocessing, name))

    @classmethod
    def load(
        cls,
        ref: str | Path,
        preprocessing: Preprocessing,
        device: str | torch.device = "cpu",
        dtype: str = "auto",
    ) -> VLEncoder:
        """Load a model directory or a hub id already in the local HF cache.

        Never downloads: a controller must not start pulling gigabytes at run
        time. A ref that is neither is a `PolicyConfigError` saying so.
        """
        from safetensors import SafetensorError
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        dev = torch.device(device)
        torch_dtype = resolve_dtype(dev, dtype)
        ref, kwargs = check_model_ref(ref)
        LOG.info("loading VL model %s on %s (%s)", ref, dev, torch_dtype)
        try:
            processor = AutoProcessor.from_pretrained(ref, **kwargs)
            # use_safetensors: a hub-cache entry holding only pickles fails
            # instead of being unpickled.
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                ref, dtype=torch_dtype, use_safetensors=True, **kwargs
            )
        except (OSError, ValueError, KeyError, SafetensorError) as exc:
            raise PolicyConfigError(
                f"VL model {ref!r} cannot be loaded: {exc}. A hub id must already be"
                " downloaded (e.g. `hf download Qwen/Qwen2.5-VL-3B-Instruct`); nothing is"
                " fetched at run time."
            ) from None
        model.to(dev).eval()
        model.requires_grad_(False)
        return cls(model, processor, preprocessing, dev, ref)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    def fingerprint(self) -> str:
        """A cheap identity of the weights: names, shapes and leading values rounded to bf16.

        Rounding to bf16 makes a float32 and a bf16 load of the same weights
        agree; hashing only leading values keeps it fast for a 3B model.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            for name, t in sorted(self.model.state_dict().items()):
                h.update(name.encode())
                h.update(repr(tuple(t.shape)).encode())
                head = t.detach().flatten()[:64].to(torch.bfloat16).to(torch.float32).cpu()
                h.update(head.numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def forget_fingerprint(self) -> None:
        """The weights changed (training): the next `fingerprint()` hashes them again."""
        self._fingerprint = None

    def identity(self) -> dict[str, Any]:
        """What a VL cache manifest records and checks."""
        return {
            "model": self.ref,
            "fingerprint": self.fingerprint(),
            "hidden_size": self.hidden_size,
            "preprocessing": asdict(self.preprocessing),
        }

    # -- the shared encoding path ---------------------------------------------

    def _messages(self, images: Sequence[np.ndarray], instruction: str) -> list[dict[str, Any]]:
        pp = self.preprocessing
        content: list[dict[str, Any]] = [
            {
                "type": "image",
                "image": _to_pil(img, i),
                "min_pixels": pp.min_pixels,
                "max_pixels": pp.max_pixels,
            }
            for i, img in enumerate(images)
        ]
        content.append({"type": "text", "text": instruction})
        messages: list[dict[str, Any]] = []
        if pp.system_prompt:
            messages.append({"role": "system", "content": pp.system_prompt})
        messages.append({"role": "user", "content": content})
        return messages

    def preprocess(self, samples: Sequence[Sample]) -> Any:
        """CPU work: resize within the image bounds, chat template, tokenise; padded batch."""
        from qwen_vl_utils import process_vision_info

        if not samples:
            raise PolicyError("VL encoder: no samples to encode")
        texts: list[str] = []
        images: list[Any] = []
        for imgs, instruction in samples:
            if len(imgs) == 0:
                raise PolicyError("VL encoder: a sample has no images")
            messages = self._messages(imgs, instruction)
            texts.append(
                self.processor.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
            )
            image_inputs, _ = process_vision_info(messages)
            images.extend(image_inputs or [])
        return self.processor(text=texts, images=images, padding=True, return_tensors="pt")

    def pool(self, inputs: Any) -> torch.Tensor:
        """Model forward and pooling, under whatever grad mode the caller chose.

        The one definition of the feature: `forward` runs it under inference mode for
        real time and the cache; VL tuning (`policies.train vl`) runs it with gradients.
        """
        out = self.model(
            **inputs,
            output_hidden_states=True,
            use_cache=False,
            logits_to_keep=1,  # the logits are never used: skip the vocab projection
        )
        return masked_mean_pool(out.hidden_states[-1], inputs["attention_mask"])

    def forward(self, inputs: Any) -> torch.Tensor:
        """Model forward and pooling -> (B, 1, hidden) float32 on the encoder's device."""
        inputs = inputs.to(self.device)
        autocast = (
            torch.autocast(device_type="cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else nullcontext()
        )
        with torch.inference_mode(), autocast:
            return self.pool(inputs)

    def encode(self, images: Sequence[np.ndarray], instruction: str) -> torch.Tensor:
        """One sample -> (1, 1, hidden). The function both real time and the cache call."""
        return self.forward(self.preprocess([(images, instruction)]))
