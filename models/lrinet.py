"""LRINet: the low-resolution-input student of CRKD (Zhu, Li, Yuan, Gan).

Frame level (per frame, 2D): three stages of split kernels (a 1x3 then a 3x1 convolution,
each + BN + ReLU), each stage ending in a 2x2 max-pool, so an r x r frame becomes r/8 x r/8.
The first bottleneck's middle 128->128 convolution has kernel ``k = r/8 - 6`` and no padding,
which turns r/8 x r/8 into exactly 7 x 7 for every supported r (56, 72, 88, 104). Further
bottlenecks widen the map to 7 x 7 x N with N = 2048, the shape of a ResNet-50 teacher's last
feature map at 224 x 224, so frame features are distilled without any resizing (the paper's
finding: keep the frame-level scale of the teacher rather than recover it).

Temporal level: three residual bottlenecks whose 3x3 convolution is a **TSCM+2D** hybrid
(TSCM: a zero-parameter shift of two channel groups from the previous / next frame, added
onto the current frame, then an ordinary 2D convolution), with a temporal max-pool (2) after
the first and the second, so T' = T // 4 exactly as ``models.base.out_length``; then global
average pooling and a fully connected classifier.

Multi-level CTC (4 levels, as the paper): one classifier, shared by every level, reads
"frame" (pooled frame features, max-pooled in time to T'), "stage1", "stage2" (the outputs
of the first two temporal blocks, pooled to T') and "main" (the last block). Sharing keeps
the card at the paper's 10.5 M parameters; every level is 2048 wide, so it is well defined.

Padding: frames beyond each length are zeroed before every temporal shift, so a clip gives
the same valid outputs alone or padded in a batch (eval mode).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from models.base import TIME_REDUCTION, ModelOutput, out_length
from models.encoders import per_valid_frame

SUPPORTED_SIZES = (56, 72, 88, 104)  # r with k = r/8 - 6 in {1, 3, 5, 7}
FRAME_MAP = 7  # side of the frame-level map, equal to ResNet-50's at 224 x 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def first_kernel(size: int) -> int:
    """Kernel k of the first bottleneck's middle conv: ``k = r/8 - 6`` (r/8 - k + 1 = 7).

    Raises:
        ValueError: when ``size`` is not one of 56, 72, 88, 104.
    """
    if size not in SUPPORTED_SIZES:
        raise ValueError(
            f"LRINet input size {size} not supported: k = r/8 - 6 needs r in {SUPPORTED_SIZES} "
            "(resize the frames or pick one of these sizes)"
        )
    return size // 8 - 6


@dataclass(frozen=True)
class LRINetConfig:
    """Architecture of LRINet; the defaults reproduce the paper's card (10.5 M params at 72)."""

    input_size: int = 72  # r: side of the square input frames (56, 72, 88 or 104)
    stem_channels: tuple[int, int, int] = (64, 128, 256)  # width of the three split-kernel stages
    stem_repeats: int = 3  # (1x3, 3x1) pairs per stage before its 2x2 max-pool
    first_mid: int = 128  # middle width of the first bottleneck (the k x k conv is first_mid -> first_mid)
    frame_width: int = 512  # width after the first bottleneck
    frame_blocks: int = 0  # extra 7x7 bottlenecks at frame_width (mid = frame_width / 4)
    feature_dim: int = 2048  # N of the 7 x 7 x N frame map (ResNet-50 teacher: 2048)
    expand_mid: int = 128  # middle width of the bottleneck that widens frame_width -> feature_dim
    temporal_mid: int = 240  # middle width of the three TSCM+2D bottlenecks
    shift_div: int = 8  # TSCM moves 1/shift_div of the channels from each neighbour
    grad_stop_p: float = 0.0  # CRKD stochastic gradient stopping: per-frame probability (training only)
    dropout: float = 0.0  # dropout before the classifier
    width: float = 1.0  # multiplies every channel width above (CPU-sized variants); 1.0 is the paper's card

    def __post_init__(self) -> None:
        first_kernel(self.input_size)  # raises ValueError for an unsupported size
        if not 0.0 < self.width <= 4.0:
            raise ValueError(f"LRINet width must be in (0, 4], got {self.width}")
        for name in ("first_mid", "frame_width", "feature_dim", "expand_mid", "temporal_mid", "stem_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"LRINet {name} must be >= 1, got {getattr(self, name)}")
        if len(self.stem_channels) != 3 or min(self.stem_channels) < 1:
            raise ValueError(f"LRINet stem_channels must be three positive widths, got {self.stem_channels}")
        if self.frame_blocks < 0:
            raise ValueError(f"LRINet frame_blocks must be >= 0, got {self.frame_blocks}")
        if self.shift_div < 2 or self.ch(self.temporal_mid) < self.shift_div:
            raise ValueError(f"LRINet shift_div must be in [2, temporal_mid * width], got {self.shift_div}")
        if not 0.0 <= self.grad_stop_p < 1.0:
            raise ValueError(f"LRINet grad_stop_p must be in [0, 1), got {self.grad_stop_p}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LRINet dropout must be in [0, 1), got {self.dropout}")

    def ch(self, channels: int) -> int:
        """A configured channel width scaled by ``width`` (at least 1)."""
        return max(1, int(round(channels * self.width)))


def _conv_bn(c_in: int, c_out: int, kernel: int | tuple[int, int], padding: int | tuple[int, int] = 0) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=False), nn.BatchNorm2d(c_out)]


class SplitConv(nn.Sequential):
    """A 3x3 receptive field from a 1x3 then a 3x1 convolution (each + BN + ReLU)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            *_conv_bn(c_in, c_out, (1, 3), (0, 1)),
            nn.ReLU(inplace=True),
            *_conv_bn(c_out, c_out, (3, 1), (1, 0)),
            nn.ReLU(inplace=True),
        )


class Bottleneck(nn.Module):
    """1x1 -> k x k (no padding when k > 1 shrinks the map) -> 1x1, with a residual shortcut.

    When the middle conv shrinks the map, the shortcut takes the centre crop of the input, so
    the block stays residual; a 1x1 projection adapts the width when it changes.
    """

    def __init__(self, c_in: int, c_mid: int, c_out: int, kernel: int = 3, shrink: bool = False) -> None:
        super().__init__()
        self.crop = (kernel - 1) // 2 if shrink else 0
        self.conv1 = nn.Sequential(*_conv_bn(c_in, c_mid, 1), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(*_conv_bn(c_mid, c_mid, kernel, 0 if shrink else kernel // 2), nn.ReLU(inplace=True))
        self.conv3 = nn.Sequential(*_conv_bn(c_mid, c_out, 1))
        self.shortcut = nn.Identity() if c_in == c_out else nn.Sequential(*_conv_bn(c_in, c_out, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: [N, c_in, H, W]. Returns [N, c_out, H - 2 * crop, W - 2 * crop]."""
        y = self.conv3(self.conv2(self.conv1(x)))
        c = self.crop
        skip = x[:, :, c : x.shape[2] - c, c : x.shape[3] - c] if c else x
        return torch.relu(y + self.shortcut(skip))


class FrameExtractor(nn.Module):
    """r x r x 3 frame -> 7 x 7 x feature_dim map (the level CRKD distils against ResNet-50)."""

    def __init__(self, cfg: LRINetConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in map(cfg.ch, cfg.stem_channels):
            for _ in range(cfg.stem_repeats):
                layers.append(SplitConv(c_in, c))
                c_in = c
            layers.append(nn.MaxPool2d(2))
        k = first_kernel(cfg.input_size)
        width, feature_dim = cfg.ch(cfg.frame_width), cfg.ch(cfg.feature_dim)
        layers.append(Bottleneck(c_in, cfg.ch(cfg.first_mid), width, kernel=k, shrink=True))
        for _ in range(cfg.frame_blocks):
            layers.append(Bottleneck(width, max(1, width // 4), width))
        layers.append(Bottleneck(width, cfg.ch(cfg.expand_mid), feature_dim))
        self.net = nn.Sequential(*layers)
        self.out_dim = feature_dim

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: [N, 3, r, r] normalised frames. Returns [N, feature_dim, 7, 7]."""
        return self.net(x)


def tscm(x: Tensor, shift_div: int = 8) -> Tensor:
    """Temporal shift + superposition (zero parameters, zero multiplies).

    The first C/shift_div channels of frame t receive (are summed with) the same channels of
    frame t-1, the next C/shift_div those of frame t+1; the other channels are unchanged. A
    following 2D convolution thus mixes each frame with its neighbours ("TSCM+2D" hybrid).
    Unlike a pure shift, the superposition keeps the current frame's own values. Sequence
    ends see zeros, so zeroed padding behaves exactly like the end of the clip.

    Args:
        x: [B, T, C, H, W].
        shift_div: 1/shift_div of the channels come from each neighbour.

    Returns:
        [B, T, C, H, W].
    """
    fold = x.shape[2] // shift_div
    prev, nxt, rest = x.split([fold, fold, x.shape[2] - 2 * fold], dim=2)
    zero = torch.zeros_like(prev[:, :1])  # [B, 1, fold, H, W]
    from_prev = torch.cat([zero, prev[:, :-1]], dim=1)  # frame t gets frame t-1
    from_next = torch.cat([nxt[:, 1:], zero], dim=1)  # frame t gets frame t+1
    return torch.cat([prev + from_prev, nxt + from_next, rest], dim=2)


def _time_mask(lengths: Tensor, steps: int, dtype: torch.dtype) -> Tensor:
    """[B, steps, 1, 1, 1] float mask, 1 on the first lengths[b] steps."""
    mask = torch.arange(steps, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)  # [B, steps]
    return mask.to(dtype)[:, :, None, None, None]


class TSCMBottleneck(nn.Module):
    """Residual bottleneck 1x1 -> TSCM + 3x3 -> 1x1 over per-frame maps of a clip."""

    def __init__(self, channels: int, mid: int, shift_div: int) -> None:
        super().__init__()
        self.shift_div = shift_div
        self.conv1 = nn.Sequential(*_conv_bn(channels, mid, 1), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(*_conv_bn(mid, mid, 3, 1), nn.ReLU(inplace=True))
        self.conv3 = nn.Sequential(*_conv_bn(mid, channels, 1))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Args:
            x: [B, T, C, h, w], zero beyond lengths.
            lengths: [B] valid steps.

        Returns:
            [B, T, C, h, w], zero beyond lengths.
        """
        b, t, c, h, w = x.shape
        y = self.conv1(x.reshape(b * t, c, h, w))  # [B*T, mid, h, w]
        y = y.reshape(b, t, -1, h, w) * _time_mask(lengths, t, y.dtype)  # padding must not shift in
        y = tscm(y, self.shift_div).reshape(b * t, -1, h, w)  # [B*T, mid, h, w]
        y = self.conv3(self.conv2(y))  # [B*T, C, h, w]
        out = torch.relu(y + x.reshape(b * t, c, h, w)).reshape(b, t, c, h, w)
        return out * _time_mask(lengths, t, out.dtype)


def time_max_pool(x: Tensor, factor: int = 2) -> Tensor:
    """Max over non-overlapping windows of ``factor`` steps on dim 1 (floor: T -> T // factor).

    Args:
        x: [B, T, ...] with T >= factor.

    Returns:
        [B, T // factor, ...].
    """
    b, t = x.shape[:2]
    keep = (t // factor) * factor
    return x[:, :keep].reshape(b, t // factor, factor, *x.shape[2:]).amax(dim=2)  # [B, T/f, f, ...] -> [B, T/f, ...]


def stop_gradient_frames(x: Tensor, p: float, training: bool) -> Tensor:
    """CRKD stochastic gradient stopping over frames (Niu & Mak, ECCV 2020); values are unchanged.

    The CTC gradients reach the frame-level extractor through only a random part of the frames,
    which cuts memory/time and fights CTC overfitting of the per-frame CNN. It is applied where the
    frame features enter the temporal module, so the features given to the frame-level MSE (taken
    before it) still receive feature distillation on every frame.

    Args:
        x: [B, T, ...]. Each frame's gradient is stopped with probability p; values unchanged.
    """
    if not training or p <= 0.0:
        return x
    stop = torch.rand(x.shape[:2], device=x.device) < p  # [B, T]
    stop = stop.reshape(*x.shape[:2], *([1] * (x.dim() - 2)))
    return torch.where(stop, x.detach(), x)


def resize_matrix(src: int, dst: int) -> Tensor:
    """[dst, src] matrix of the antialiased bilinear resize along one axis (PyTorch's / PIL's filter).

    Output sample i sits at ``(i + 0.5) * src / dst`` in the input; when shrinking, the triangle
    filter widens by the shrink factor so every input sample contributes (that is the
    antialiasing); weights are normalised to sum to 1. Built in numpy so it is a constant in a
    traced graph: ``F.interpolate(..., antialias=True)`` has no ONNX export, two matmuls do.
    tests/test_students.py checks it against ``F.interpolate``.
    """
    scale = src / dst
    support = max(scale, 1.0)  # bilinear: half-width 1 input sample, widened when shrinking
    a = np.zeros((dst, src), dtype=np.float64)
    for i in range(dst):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), src)
        j = np.arange(lo, hi)
        w = np.clip(1.0 - np.abs((j + 0.5 - center) / support), 0.0, None)
        a[i, lo:hi] = w / w.sum()
    return torch.from_numpy(a.astype(np.float32))


def resize_antialiased(x: Tensor, size: int) -> Tensor:
    """[N, C, H, W] -> [N, C, size, size], equal to bilinear ``F.interpolate`` with antialias (exportable)."""
    a_h = resize_matrix(int(x.shape[-2]), size).to(x)  # [size, H] (int(): a constant when traced; H, W are fixed)
    a_w = resize_matrix(int(x.shape[-1]), size).to(x)  # [size, W]
    return torch.matmul(torch.matmul(a_h, x), a_w.t())  # [N, C, size, H] @ [H, W] ... -> [N, C, size, size]


class LRINet(nn.Module):
    """CRKD's low-resolution student. forward({"rgb": [B, T, 3, r, r]}, lengths) -> ModelOutput.

    Levels: "frame", "stage1", "stage2", "main" (all [B, T // 4, V], one shared classifier).
    Features: "frame" [B, T, N] (pooled 7x7xN frame map, the CRKD feature-distillation level),
    "temporal" [B, T', N] (after the last TSCM block), "context" (the same tensor: LRINet has
    no recurrent layer) and, with ``keep_frame_map``, "frame_map" [B, T, N, 7, 7].
    """

    def __init__(self, vocab_size: int, cfg: LRINetConfig = LRINetConfig(), keep_frame_map: bool = False) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (blank + one gloss), got {vocab_size}")
        self.cfg = cfg
        self.keep_frame_map = keep_frame_map
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.frame = FrameExtractor(cfg)
        n = cfg.ch(cfg.feature_dim)
        self.blocks = nn.ModuleList(TSCMBottleneck(n, cfg.ch(cfg.temporal_mid), cfg.shift_div) for _ in range(3))
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(n, vocab_size)

    def _frames(self, rgb: Tensor, lengths: Tensor) -> Tensor:
        """[B, T, 3, H, W] in [0, 1] -> [B, T, N, 7, 7], zero on padded frames."""
        b, t = rgb.shape[:2]
        r = self.cfg.input_size
        x = rgb.reshape(b * t, *rgb.shape[2:]).float()  # [B*T, 3, H, W]
        if x.shape[-2:] != (r, r):  # cached at another size: resize here rather than refuse
            x = resize_antialiased(x, r)
        x = ((x - self.mean) / self.std).reshape(b, t, 3, r, r)  # [B, T, 3, r, r]
        side = FRAME_MAP
        if x.device.type == "meta" or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            maps = self.frame(x.reshape(b * t, 3, r, r))  # shapes only / traced: every frame
            maps = maps.reshape(b, t, -1, side, side)  # [B, T, N, 7, 7]
            return maps * _time_mask(lengths, t, maps.dtype)
        # padded frames cost nothing and stay out of BatchNorm statistics
        flat = per_valid_frame(lambda f: self.frame(f).flatten(1), x, lengths)  # [B, T, N * 7 * 7]
        return flat.reshape(b, t, -1, side, side)  # [B, T, N, 7, 7]

    def forward(self, inputs: dict[str, Tensor], lengths: Tensor) -> ModelOutput:
        """Args:
            inputs: "rgb" [B, T, 3, r, r] float in [0, 1] (other sizes are resized to r).
            lengths: [B] valid frames.

        Returns:
            ModelOutput: logits "frame", "stage1", "stage2", "main" [B, T // 4, V],
            out_lengths [B] = lengths // 4 (min 1), features as in the class docstring.
        """
        rgb = inputs["rgb"]
        t_in = rgb.shape[1]
        if t_in < TIME_REDUCTION:  # pool needs 4 steps; out_length promises one
            pad = rgb.new_zeros(rgb.shape[0], TIME_REDUCTION - t_in, *rgb.shape[2:])
            rgb = torch.cat([rgb, pad], dim=1)
        len1 = (lengths // 2).clamp(min=1)
        len2 = out_length(lengths)

        maps = self._frames(rgb, lengths)  # [B, T, N, 7, 7]
        frame = maps.mean(dim=(3, 4))  # [B, T, N]
        x = stop_gradient_frames(maps, self.cfg.grad_stop_p, self.training)

        s1 = self.blocks[0](x, lengths)  # [B, T, N, 7, 7]
        s2 = self.blocks[1](time_max_pool(s1) * _time_mask(len1, s1.shape[1] // 2, s1.dtype), len1)  # [B, T/2, ...]
        s3 = self.blocks[2](time_max_pool(s2) * _time_mask(len2, s2.shape[1] // 2, s2.dtype), len2)  # [B, T/4, ...]
        main = s3.mean(dim=(3, 4))  # [B, T', N]

        pooled = {
            "frame": time_max_pool(frame, TIME_REDUCTION),  # [B, T', N]
            "stage1": time_max_pool(s1.mean(dim=(3, 4)), TIME_REDUCTION),
            "stage2": time_max_pool(s2.mean(dim=(3, 4)), 2),
            "main": main,
        }
        step_mask = _time_mask(len2, main.shape[1], main.dtype)[:, :, :, 0, 0]  # [B, T', 1]
        logits = {name: self.classifier(self.dropout(f * step_mask)) for name, f in pooled.items()}
        feats = {"frame": frame[:, :t_in], "temporal": main, "context": main}
        if self.keep_frame_map:
            feats["frame_map"] = maps[:, :t_in]
        return ModelOutput(logits=logits, out_lengths=len2, features=feats)
