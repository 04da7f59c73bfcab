"""Per-frame stream encoders: RGB (torchvision ResNet or a tiny CNN), keypoints (MLP), optical flow (CNN).

Every encoder maps one stream of a padded batch to frame features ``[B, T, D]`` (``out_dim``)
with zeros on padded frames; temporal modelling happens afterwards (``models.temporal``).
Students reuse these encoders, so each is usable on its own.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn

from models.temporal import length_mask

if TYPE_CHECKING:
    from models.keypoint_input import KeypointNormConfig

RESNETS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}  # backbone -> feature width (fc removed)
RGB_BACKBONES = (*RESNETS, "tiny")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCH_CACHE = "imagenet"  # rgb_pretrained value meaning "torchvision's file in the torch hub cache"
LEFT_SHOULDER, RIGHT_SHOULDER = 11, 12  # MediaPipe pose indices (holistic layout)

_warned_random_init: set[str] = set()  # backbones already warned about, so the warning shows once


def per_valid_frame(fn: Callable[[Tensor], Tensor], x: Tensor, lengths: Tensor) -> Tensor:
    """Apply a per-frame network to the valid frames of a padded batch only.

    Padded frames cost no compute and never enter BatchNorm statistics; they come back as zeros.

    Args:
        fn: maps [N, *frame_shape] -> [N, D].
        x: [B, T, *frame_shape].
        lengths: [B] valid frames.

    Returns:
        [B, T, D], zero on padded frames.
    """
    b, t = x.shape[:2]
    valid = length_mask(lengths, t)  # [B, T]
    feats = fn(x[valid])  # [N = sum(lengths), *frame_shape] -> [N, D]
    out = feats.new_zeros(b, t, feats.shape[-1])  # [B, T, D]
    out[valid] = feats
    return out


def _check_state_dict(state: dict[str, Tensor], model: nn.Module, path: Path, backbone: str) -> None:
    """Raise one clear ValueError when ``state`` is not a ``backbone`` state dict (fc ignored)."""
    want = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    have = {k: v.shape for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if tuple(want[k]) != tuple(have[k]))
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: file {tuple(have[k])}, model {tuple(want[k])})")
    raise ValueError(
        f"{path}: not a torchvision {backbone} state dict: {'; '.join(parts)}. "
        f"Give rgb_pretrained the ImageNet weights file of {backbone} (torchvision's {backbone}-*.pth)"
    )


def torch_cache_weights(backbone: str) -> Path:
    """Path of torchvision's ImageNet file for ``backbone`` in the torch hub cache (must exist)."""
    import torchvision  # here, not at the top: its import costs ~1 s, which a landmark model never needs

    enum = torchvision.models.get_model_weights(backbone)
    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    candidates = [ckpt_dir / w.url.rsplit("/", 1)[-1] for w in enum]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"rgb_pretrained={TORCH_CACHE!r} but no {backbone} ImageNet weights in {ckpt_dir} "
        f"(looked for {', '.join(p.name for p in candidates)}); copy the file there or give its path"
    )


def load_backbone_weights(model: nn.Module, path: str | Path, backbone: str) -> None:
    """Load ImageNet weights into a torchvision ResNet whose fc was removed.

    Accepts a plain state dict or one wrapped in ``{"state_dict": ...}``/``{"model": ...}``,
    with or without a DDP ``module.`` prefix; ``fc.*`` entries are dropped. Anything else
    raises a ValueError naming the file before a single weight is copied.
    """
    path = Path(torch_cache_weights(backbone) if str(path) == TORCH_CACHE else path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: rgb_pretrained weights file not found; fix the path or set rgb_pretrained: null"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise ValueError(f"{path}: cannot read as a torch state dict ({exc.__class__.__name__}: {exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DDP checkpoints prefix every key
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the classifier is not used
    _check_state_dict(state, model, path, backbone)
    model.load_state_dict(state, strict=False)  # keys verified above; only num_batches_tracked may differ


class TinyCNN(nn.Module):
    """Four stride-2 conv layers (c, 2c, 4c, 8c channels) + global average pool: 48-64 px frames on a CPU."""

    def __init__(self, channels: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(4):
            c_out = channels * 2**i
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = c_in

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: [N, C, H, W]. Returns [N, 8 * channels]."""
        return self.net(x)


class RGBEncoder(nn.Module):
    """Per-frame 2D CNN over RGB frames in [0, 1]; ImageNet normalisation happens here."""

    def __init__(self, backbone: str = "resnet18", pretrained: str | None = None, tiny_channels: int = 16) -> None:
        super().__init__()
        if backbone not in RGB_BACKBONES:
            raise ValueError(f"unknown rgb_backbone {backbone!r}; choose one of {RGB_BACKBONES}")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if backbone == "tiny":
            if pretrained is not None:
                raise ValueError(
                    f"rgb_pretrained={pretrained!r} given for rgb_backbone 'tiny', which has no ImageNet weights"
                )
            self.cnn: nn.Module = TinyCNN(tiny_channels)
            self.out_dim = self.cnn.out_dim
            return
        import torchvision

        net = getattr(torchvision.models, backbone)(weights=None)
        net.fc = nn.Identity()  # keep the pooled 512/2048-d feature
        if pretrained is not None:
            load_backbone_weights(net, pretrained, backbone)
        elif backbone not in _warned_random_init:
            _warned_random_init.add(backbone)
            warnings.warn(
                f"no ImageNet weights for {backbone} (rgb_pretrained is None): random init; "
                f"set rgb_pretrained to a local torchvision {backbone} state dict file or {TORCH_CACHE!r}",
                UserWarning,
                stacklevel=2,
            )
        self.cnn = net
        self.out_dim = RESNETS[backbone]

    def forward(self, rgb: Tensor, lengths: Tensor) -> Tensor:
        """Args:
            rgb: [B, T, 3, H, W] in [0, 1].
            lengths: [B] valid frames.

        Returns:
            [B, T, out_dim], zero on padded frames.
        """
        return per_valid_frame(lambda x: self.cnn((x - self.mean) / self.std), rgb, lengths)


def keypoint_gather(indices: Tensor | list[int], holistic: bool) -> tuple[Tensor, tuple[int, int] | None]:
    """The points a landmark model reads: ``indices``, then any normalisation anchor not among them.

    Models gather these once, first, so per-point work (NaN checks, masking, normalisation)
    touches ~92 points instead of all 543. For holistic layouts the anchors are the shoulders,
    which set the body frame whether or not the subset contains them.

    Args:
        indices: [K'] subset of the cached layout's points.
        holistic: True when the layout is MediaPipe Holistic's 543 points.

    Returns:
        (gather long [P], anchors): P = K' plus the shoulders the subset lacks; anchors are the
        positions of the left and right shoulder in ``gather`` (None for other layouts).
    """
    idx = [int(i) for i in torch.as_tensor(indices, dtype=torch.long).reshape(-1)]
    if not holistic:
        return torch.tensor(idx, dtype=torch.long), None
    extra = [a for a in (LEFT_SHOULDER, RIGHT_SHOULDER) if a not in idx]
    gather = idx + extra
    return torch.tensor(gather, dtype=torch.long), (gather.index(LEFT_SHOULDER), gather.index(RIGHT_SHOULDER))


def take_points(x: Tensor, gather: Tensor, prefix: int | None) -> Tensor:
    """``x[:, :, gather]`` for [B, T, K, ...] inputs: a slice when ``gather`` is 0..P-1 (``prefix`` = P;
    every point of a layout, no copy), else one ``index_select``."""
    return x[:, :, :prefix] if prefix is not None else x.index_select(2, gather)


def gather_prefix(gather: Tensor) -> int | None:
    """P when ``gather`` is exactly 0..P-1 (see ``take_points``), else None."""
    n = gather.numel()
    return n if torch.equal(gather, torch.arange(n, dtype=gather.dtype)) else None


def normalise_gathered(pts: Tensor, mask: Tensor, num_selected: int, anchors: tuple[int, int] | None,
                       eps: float = 1e-3) -> Tensor:
    """``normalise_keypoints`` on points gathered by ``keypoint_gather``, coordinate-major.

    Works on a [B, T, 3, P] view so that every per-frame broadcast (centre, scale, mask) runs
    over P contiguous points: onnxruntime is several times slower on broadcasts whose inner
    span is 2 or 3 coordinates. The arithmetic per element is that of the point-major form.

    Args:
        pts: [B, T, P, 3] raw coordinates of the gathered points (NaN allowed where masked).
        mask: [B, T, P] True where the point was detected.
        num_selected: K', the first K' gathered points are the subset returned.
        anchors: positions of the left and right shoulder among the P points (holistic), or None.

    Returns:
        [B, T, 3, K'] normalised (x, y, z) rows, zero where masked.
    """
    c = pts.transpose(2, 3)  # [B, T, P, 3] -> [B, T, 3, P]
    mk = mask.unsqueeze(2)  # [B, T, 1, P]
    full = torch.where(mk, c, torch.zeros_like(c))  # NaN-safe zeroing of missing points
    if num_selected < full.shape[-1]:
        sel, mk = full[..., :num_selected], mk[..., :num_selected]  # [B, T, 3, K'], [B, T, 1, K']
    else:
        sel = full
    m = mk.to(sel.dtype)  # [B, T, 1, K']
    xy = sel[:, :, :2]  # [B, T, 2, K']
    count = m.sum(dim=3, keepdim=True)  # [B, T, 1, 1]
    centre = (xy * m).sum(dim=3, keepdim=True) / count.clamp(min=1)  # [B, T, 2, 1]
    var = (((xy - centre) ** 2) * m).sum(dim=(2, 3), keepdim=True) / (2 * count).clamp(min=1)  # [B, T, 1, 1]
    scale = var.sqrt().clamp(min=eps)
    if anchors is not None:
        ls, rs = full[:, :, :2, anchors[0]], full[:, :, :2, anchors[1]]  # [B, T, 2] shoulders
        width = (ls - rs).norm(dim=-1)  # [B, T]
        ok = mask[:, :, anchors[0]] & mask[:, :, anchors[1]] & (width > eps)  # [B, T]
        ok = ok[:, :, None, None]  # [B, T, 1, 1]
        centre = torch.where(ok, ((ls + rs) / 2)[:, :, :, None], centre)  # [B, T, 2, 1]
        scale = torch.where(ok, width[:, :, None, None].clamp(min=eps), scale)
    out = torch.cat([(xy - centre) / scale, sel[:, :, 2:] / scale], dim=2)  # [B, T, 3, K']
    return out.clamp(-10.0, 10.0) * m


def normalise_keypoints(kp: Tensor, mask: Tensor, indices: Tensor, holistic: bool, eps: float = 1e-3) -> Tensor:
    """Select a subset of points and make it translation- and scale-invariant per frame.

    Holistic layout: centre on the shoulder midpoint and divide by the shoulder width when
    both shoulders are visible (a body-relative frame that stays put while the hands move,
    whether or not the subset contains the shoulders); other frames and other layouts: centre
    on the subset's visible points' mean and divide by their std. z is scaled by the same
    factor. Coordinates of masked points never enter and come out as 0. Only the subset and
    the shoulders are read (``keypoint_gather``; models compute that gather once).

    Args:
        kp: [B, T, K, 3] raw coordinates (x, y in [0, 1] of the frame, z).
        mask: [B, T, K] True where the point was detected.
        indices: [K'] subset of the K points to return.
        holistic: True when K indexes the MediaPipe Holistic 543 layout.

    Returns:
        [B, T, K', 3] normalised coordinates, zero where masked.
    """
    gather, anchors = keypoint_gather(indices, holistic)
    gather = gather.to(kp.device)
    rows = normalise_gathered(kp.index_select(2, gather), mask.index_select(2, gather), len(indices), anchors, eps)
    return rows.transpose(2, 3)  # [B, T, 3, K'] -> [B, T, K', 3]


class KeypointEncoder(nn.Module):
    """Per-frame MLP over K points as ``models.keypoint_input.KeypointInput`` describes them.

    The subset (e.g. ``mediapipe_92``) is chosen by ``indices`` into the cached layout, so one
    cache serves every landmark model; normalisation may use points outside it (shoulders).
    Only the subset and the shoulders are gathered (then cast to float32), never all K points.
    """

    def __init__(self, indices: Tensor | list[int], layout: str, out_dim: int = 256, dropout: float = 0.0,
                 num_points: int | None = None, norm: "KeypointNormConfig | None" = None) -> None:
        super().__init__()
        from models.keypoint_input import KeypointInput, KeypointNormConfig

        idx = torch.as_tensor(indices, dtype=torch.long)
        self.input = KeypointInput(idx, layout, int(num_points or int(idx.max()) + 1), norm or KeypointNormConfig())
        in_dim = self.input.out_dim
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, out_dim),
            nn.LayerNorm(out_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(out_dim, out_dim),
            nn.LayerNorm(out_dim),
            nn.ReLU(inplace=True),
        )
        self.out_dim = out_dim

    @property
    def indices(self) -> Tensor:
        """[K'] the points of the cached layout the encoder reads."""
        return self.input.indices

    def forward(self, keypoints: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
        """Args:
            keypoints: [B, T, K, 3] raw cache coordinates.
            mask: [B, T, K] bool, True where detected.
            lengths: [B] valid frames.

        Returns:
            [B, T, out_dim], zero on padded frames.
        """
        t = keypoints.shape[1]
        x = self.input(keypoints, mask, lengths)  # [B, T, K' * channels]
        y = self.mlp(x)  # [B, T, out_dim]
        return y * length_mask(lengths, t).unsqueeze(-1).to(y.dtype)


class FlowEncoder(nn.Module):
    """Small 2D CNN per frame pair over optical flow in pixels.

    A BatchNorm on the two input channels learns the flow's scale, so caches at any
    resolution (flow magnitudes grow with frame size) need no hand-set constant.
    """

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.BatchNorm2d(2)]
        c_in = 2
        for i in range(3):
            c_out = channels * 2**i
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = c_in

    def forward(self, flow: Tensor, lengths: Tensor) -> Tensor:
        """Args:
            flow: [B, T, 2, h, w] in pixels.
            lengths: [B] valid frames.

        Returns:
            [B, T, 4 * channels], zero on padded frames.
        """
        return per_valid_frame(self.net, flow.float(), lengths)
