"""Loading the weights of real reward models (open_clip models from a state-dict file, transformers
CLIP models from a local folder), checked against their architecture before anything loads.

Nothing here touches the network: open_clip models are built from a config (a built-in name such
as "ViT-L-14", or a JSON file / dict in open_clip's config format) with no `pretrained` tag and the
state dict is loaded from the given file; transformers models load with `local_files_only=True`.

`*_problems` functions compare the names and shapes of the tensors a file holds (read from the
safetensors header, or a memory-mapped torch pickle) with those of the architecture built on the
`meta` device, so a missing file, a wrong model's weights or an unreadable file is found in well
under a second, before any job starts, and reported naming the setting and the path.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_SHAPE_FREE = ("positional_embedding", "position_ids", "logit_bias")  # open_clip resizes or drops these


class WeightsError(ValueError):
    """A reward model's weights are missing or do not fit its architecture (names setting and path)."""


def where(owner: str, key: str, path) -> str:
    return f"{owner} setting '{key}' ({path})"


def raise_problems(problems: list[str]) -> None:
    if problems:
        raise WeightsError("; ".join(problems))


def default_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


# ---------------------------------------------------------------- state-dict files


def _unwrap(checkpoint) -> dict:
    """open_clip's conventions: a {'state_dict': ...} wrapper and a DistributedDataParallel 'module.' prefix."""
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ValueError("holds no state dict")
    if next(iter(checkpoint)).startswith("module."):
        checkpoint = {k.removeprefix("module."): v for k, v in checkpoint.items()}
    return checkpoint


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in a .safetensors file (header only) or a torch pickle
    (memory-mapped, so the values are not read)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return {k: tuple(v.shape) for k, v in _unwrap(checkpoint).items() if isinstance(v, torch.Tensor)}


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return _unwrap(torch.load(path, map_location="cpu", weights_only=True))


def file_problems(owner: str, key: str, path, suffixes=(".safetensors", ".bin", ".pt", ".pth")) -> list[str]:
    if path is None or str(path) == "":
        return [f"{owner} setting '{key}' is not set: give the local path of the weights"]
    path = Path(path)
    if not path.is_file():
        return [f"{where(owner, key, path)}: no such file"]
    if path.suffix not in suffixes:
        return [f"{where(owner, key, path)}: expected a {' / '.join(suffixes)} file"]
    return []


def shape_problems(
    owner: str,
    key: str,
    path: Path,
    expected: dict[str, tuple],
    found: dict[str, tuple],
    shape_free: tuple[str, ...] = (),
) -> list[str]:
    """Missing, unexpected and mis-shaped tensors, a few of each named."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(k for k in set(found) - set(expected) if not k.endswith(shape_free))
    wrong = sorted(
        f"{k} {found[k]} != {expected[k]}"
        for k in set(expected) & set(found)
        if found[k] != expected[k] and not k.endswith(shape_free)
    )
    out = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            out.append(
                f"{where(owner, key, path)}: not the weights of this architecture: {len(items)} {label} "
                f"tensors ({', '.join(items[:3])}{more})"
            )
    return out


def state_file_problems(
    owner: str, key: str, path, expected: dict[str, tuple], shape_free: tuple[str, ...] = ()
) -> list[str]:
    problems = file_problems(owner, key, path)
    if problems:
        return problems
    path = Path(path)
    try:
        found = tensor_shapes(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        return [
            f"{where(owner, key, path)}: cannot read the weights (not a safetensors file or a torch "
            f"state dict): {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        ]
    return shape_problems(owner, key, path, expected, found, shape_free)


def meta_shapes(build) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of the module `build()` returns, built on the meta device (no memory)."""
    with torch.device("meta"):
        module = build()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ---------------------------------------------------------------- open_clip


def open_clip_config(model: str | dict) -> tuple[dict, dict]:
    """(model config, preprocessing) from a built-in open_clip name, a JSON file in open_clip's
    config format (as `open_clip_config.json`, with or without the 'model_cfg' wrapper) or a dict."""
    import open_clip

    if isinstance(model, dict):
        raw = dict(model)
    elif str(model).endswith(".json"):
        raw = json.loads(Path(model).read_text())
    else:
        raw = open_clip.get_model_config(str(model))
        if raw is None:
            raise ValueError(f"open_clip has no built-in config {model!r} (and it is not a .json file)")
    cfg = dict(raw.get("model_cfg", raw))
    pre = raw.get("preprocess_cfg", {}) if "model_cfg" in raw else {}
    if cfg.get("text_cfg", {}).get("hf_model_name") or cfg.get("custom_text"):
        raise ValueError(f"open_clip config {model!r} has a custom text tower; only the CLIP class is supported")
    image_size = cfg["vision_cfg"].get("image_size", 224)
    preprocess = {
        "size": image_size if isinstance(image_size, int) else tuple(image_size),
        "mean": tuple(pre.get("mean", OPENAI_MEAN)),
        "std": tuple(pre.get("std", OPENAI_STD)),
    }
    return cfg, preprocess


def build_open_clip(cfg: dict, quick_gelu: bool):
    from open_clip import CLIP

    kwargs = {k: cfg[k] for k in ("embed_dim", "vision_cfg", "text_cfg", "init_logit_bias") if k in cfg}
    return CLIP(**kwargs, quick_gelu=bool(cfg.get("quick_gelu", False) or quick_gelu))


def open_clip_problems(owner: str, key: str, path, model: str | dict, quick_gelu: bool) -> list[str]:
    try:
        cfg, _ = open_clip_config(model)
    except Exception as exc:  # noqa: BLE001
        return [f"{owner} setting 'model' ({model!r}): {exc}"]
    expected = meta_shapes(lambda: build_open_clip(cfg, quick_gelu))
    return state_file_problems(owner, key, path, expected, _SHAPE_FREE)


def load_open_clip(owner: str, key: str, path, model: str | dict, quick_gelu: bool, device=None):
    """(open_clip CLIP in eval mode on `device`, preprocessing dict); WeightsError names key and path."""
    import open_clip

    raise_problems(open_clip_problems(owner, key, path, model, quick_gelu))
    cfg, preprocess = open_clip_config(model)
    clip = build_open_clip(cfg, quick_gelu)
    try:
        open_clip.load_checkpoint(clip, str(path), strict=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"{where(owner, key, path)}: cannot load the weights: {exc}") from exc
    return clip.to(default_device(device)).eval().requires_grad_(False), preprocess


def open_clip_tokenizer(clip):
    """open_clip's BPE tokenizer (its vocabulary ships in the wheel) at the model's context length."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=clip.context_length)


# ---------------------------------------------------------------- transformers CLIP

_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def hf_clip_problems(owner: str, key: str, folder, need_processor: bool = True) -> list[str]:
    """A transformers CLIPModel folder: config.json of model_type 'clip', a weights file whose tensors
    fit that config, and (when `need_processor`) tokenizer and preprocessor files."""
    if folder is None or str(folder) == "":
        return [f"{owner} setting '{key}' is not set: give a local model folder"]
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{where(owner, key, folder)}: no such folder"]
    if not (folder / "config.json").is_file():
        return [f"{where(owner, key, folder)}: no config.json: not a transformers model folder"]
    try:
        from transformers import CLIPConfig, CLIPModel

        config = CLIPConfig.from_pretrained(folder, local_files_only=True)
        if config.model_type != "clip":
            raise ValueError(f"model_type {config.model_type!r}, expected 'clip'")
    except Exception as exc:  # noqa: BLE001
        return [f"{where(owner, key, folder)}: config.json is not a CLIP config: {exc}"]
    weights = next((folder / name for name in _HF_WEIGHTS if (folder / name).is_file()), None)
    if weights is None:
        return [
            f"{where(owner, key, folder)}: no weights ({' or '.join(_HF_WEIGHTS)}; sharded checkpoints: "
            "merge them or use a single file)"
        ]
    expected = meta_shapes(lambda: CLIPModel(config))
    problems = state_file_problems(owner, key, weights, expected, ("position_ids",))
    return problems + (processor_problems(owner, key, folder) if need_processor else [])


def processor_problems(owner: str, key: str, folder) -> list[str]:
    if folder is None or not Path(folder).is_dir():
        return [f"{where(owner, key, folder)}: no such folder"]
    folder = Path(folder)
    out = []
    if not ((folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()):
        out.append(f"{where(owner, key, folder)}: no tokenizer (tokenizer.json or vocab.json + merges.txt)")
    if not (folder / "preprocessor_config.json").is_file():
        out.append(f"{where(owner, key, folder)}: no preprocessor_config.json")
    return out


def load_hf_clip(owner: str, key: str, folder, processor_key: str | None = None, processor_folder=None, device=None):
    """(CLIPModel in eval mode, tokenizer, preprocessing dict) from local folders only."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    processor_key = processor_key or key
    processor_folder = processor_folder or folder
    problems = hf_clip_problems(owner, key, folder, need_processor=processor_folder == folder)
    if processor_folder != folder:
        problems += processor_problems(owner, processor_key, processor_folder)
    raise_problems(problems)
    try:
        model, info = CLIPModel.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"{where(owner, key, folder)}: cannot load the model: {exc}") from exc
    if info.get("missing_keys") or info.get("mismatched_keys"):
        raise WeightsError(f"{where(owner, key, folder)}: weights do not fit the config: {info}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(processor_folder, local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(processor_folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        where_processor = where(owner, processor_key, processor_folder)
        raise WeightsError(f"{where_processor}: cannot load the processor: {exc}") from exc
    size = image_processor.size
    crop = image_processor.crop_size or size
    preprocess = {
        "resize": size.get("shortest_edge") or (size["height"], size["width"]),
        "size": (crop["height"], crop["width"]) if "height" in crop else crop["shortest_edge"],
        "mean": tuple(image_processor.image_mean),
        "std": tuple(image_processor.image_std),
    }
    return model.to(default_device(device)).eval().requires_grad_(False), tokenizer, preprocess


def pooled(output) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features (projected pooler_output), 4 a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# ---------------------------------------------------------------- images


def clip_preprocess(images: torch.Tensor, size, mean, std, resize=None) -> torch.Tensor:
    """CLIP's evaluation transform, as the official reward code applies it to PIL images (open_clip's
    `image_transform`, HPSv2, the CLIPProcessor of PickScore/ddpo-pytorch): 8-bit RGB image, PIL
    bicubic resize of the shorter side to `resize` (default: `size`), centre crop to `size`, to
    [0, 1], normalise with `mean` and `std`. images: (N, 3, H, W) in [0, 1] on any device; the
    result is on the same device. Done per image on the CPU, which costs little beside a ViT-L."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    crop = [size, size] if isinstance(size, int) else list(size)
    short = resize or min(crop)
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for a in arr:
        im = TF.resize(
            Image.fromarray(a),
            short if isinstance(short, int) else list(short),
            interpolation=InterpolationMode.BICUBIC,
        )
        out.append(TF.to_tensor(TF.center_crop(im, crop)))
    x = torch.stack(out).to(images.device)
    mean = torch.tensor(mean, device=x.device)[:, None, None]
    std = torch.tensor(std, device=x.device)[:, None, None]
    return (x - mean) / std


def clip_preprocess_differentiable(images: torch.Tensor, size, mean, std, resize=None) -> torch.Tensor:
    """`clip_preprocess` in torch, with autograd through the images (DRaFT, ReFL): bicubic resize of
    the shorter side with antialiasing (torchvision's tensor resize, made to follow PIL's), centre
    crop, normalise. It skips the 8-bit rounding, which has no gradient: the two agree to the rounding
    and to the two resizes' difference (tests/test_rewards.py measures it)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    crop = [size, size] if isinstance(size, int) else list(size)
    short = resize or min(crop)
    x = images.float().clamp(0, 1)
    x = TF.resize(
        x, short if isinstance(short, int) else list(short), interpolation=InterpolationMode.BICUBIC, antialias=True
    )
    x = TF.center_crop(x, crop)
    mean_t = torch.tensor(mean, device=x.device)[:, None, None]
    std_t = torch.tensor(std, device=x.device)[:, None, None]
    return (x - mean_t) / std_t


def hf_clip_cosine_differentiable(model, tokenizer, preprocess: dict, images: torch.Tensor, prompts: list[str]):
    """(N,) `hf_clip_cosine` with autograd through the images (the model's weights stay frozen), in
    float32 on the images' device."""
    device = model.logit_scale.device
    max_length = min(77, model.config.text_config.max_position_embeddings)
    x = clip_preprocess_differentiable(
        images.to(device), preprocess["size"], preprocess["mean"], preprocess["std"], preprocess.get("resize")
    )
    with torch.no_grad():
        tokens = tokenizer(list(prompts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        txt = F.normalize(pooled(model.get_text_features(**tokens.to(device))), dim=-1)
    img = F.normalize(pooled(model.get_image_features(pixel_values=x)), dim=-1)
    return (img * txt).sum(-1).float().to(images.device)


@torch.no_grad()
def hf_clip_cosine(
    model, tokenizer, preprocess: dict, images: torch.Tensor, prompts: list[str], batch_size: int = 32
) -> torch.Tensor:
    """(N,) cosine of the image and prompt embeddings of a transformers CLIPModel, in float64 on CPU."""
    device = model.logit_scale.device
    max_length = min(77, model.config.text_config.max_position_embeddings)
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = clip_preprocess(
            images[i : i + batch_size],
            preprocess["size"],
            preprocess["mean"],
            preprocess["std"],
            preprocess.get("resize"),
        ).to(device)
        tokens = tokenizer(
            list(prompts[i : i + batch_size]), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        img = F.normalize(pooled(model.get_image_features(pixel_values=x)), dim=-1)
        txt = F.normalize(pooled(model.get_text_features(**tokens)), dim=-1)
        out.append((img * txt).sum(-1))
    return torch.cat(out).double().cpu()
