"""Audio -> per-frame animation controls for the built-in engine (torch, imported lazily).

Key frames follow Sonic: one per 1280 samples of 16 kHz audio (12.5 fps), doubled to
25 fps by interpolating between neighbours (2N-1 frames). Per key frame: RMS loudness
and band energies / spectral centroid from an STFT, smoothed, drive the jaw and lips;
a slow loudness envelope plus seeded smooth noise drive the head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import EngineError
from pipeline.media.frames import SAMPLE_RATE, SAMPLES_PER_KEY_FRAME, key_frames

if TYPE_CHECKING:
    import torch

#: Band edges in Hz: voicing (formants) lives in the middle band, sibilants in the top one.
BANDS = ((80.0, 300.0), (300.0, 3000.0), (3000.0, 8000.0))
#: Seeded head-motion noise gets a new random target every this many key frames (0.8 s).
NOISE_KNOT_EVERY = 10
#: Most smoothing passes ``steps`` can ask for (reached at 1000 steps): each pass costs a
#: full convolution, and past this the curves hardly change, so an absurd ``steps``
#: (1e9) costs what 1000 does instead of running for days before the first frame.
MAX_PASSES = 40


@dataclass(frozen=True)
class Controls:
    """Per-output-frame controls, each a float32 tensor of length ``frames``."""

    jaw: torch.Tensor  # 0 closed .. ~1 wide open (times dynamic_scale)
    stretch: torch.Tensor  # lip corners pulled apart, 0 .. 1
    angle: torch.Tensor  # head roll, radians
    shift_x: torch.Tensor  # head shift, fraction of the width
    shift_y: torch.Tensor  # head shift, fraction of the height
    zoom: torch.Tensor  # 1.0 = unchanged

    @property
    def frames(self) -> int:
        return int(self.jaw.shape[0])


def smooth(x: torch.Tensor, passes: int) -> torch.Tensor:
    """``passes`` rounds of a [1, 2, 1] / 4 filter along the last axis (edges repeated)."""
    import torch.nn.functional as F

    kernel = x.new_tensor([0.25, 0.5, 0.25]).view(1, 1, 3)
    y = x.reshape(-1, 1, x.shape[-1])
    for _ in range(passes):
        y = F.conv1d(F.pad(y, (1, 1), mode="replicate"), kernel)
    return y.reshape(x.shape)


def double_rate(x: torch.Tensor) -> torch.Tensor:
    """N key-frame values -> 2N-1 values: each key frame, then the midpoint to the next."""
    out = x.new_empty(2 * x.shape[-1] - 1)
    out[0::2] = x
    out[1::2] = 0.5 * (x[:-1] + x[1:])
    return out


def _smooth_noise(n: int, channels: int, seed: int) -> torch.Tensor:
    """Seeded noise in [-1, 1], cosine-interpolated between knots: shape (channels, n)."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed % (2**63))
    knots = torch.rand(channels, n // NOISE_KNOT_EVERY + 2, generator=gen) * 2 - 1
    pos = torch.arange(n, dtype=torch.float32) / NOISE_KNOT_EVERY
    i0 = pos.floor().long()
    t = (1 - torch.cos((pos - i0) * math.pi)) / 2
    return knots[:, i0] * (1 - t) + knots[:, i0 + 1] * t


def band_features(samples: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per key frame: RMS, band-energy shares (3, N) and spectral centroid in Hz."""
    import torch

    n = key_frames(len(samples))
    if n < 2:
        raise EngineError(f"audio too short to animate: {len(samples) / SAMPLE_RATE:.2f} s",
                          code="engine.failed")
    x = torch.from_numpy(np.ascontiguousarray(samples[: n * SAMPLES_PER_KEY_FRAME]))
    rms = x.view(n, SAMPLES_PER_KEY_FRAME).pow(2).mean(dim=1).sqrt()
    spec = torch.stft(x, n_fft=SAMPLES_PER_KEY_FRAME, hop_length=SAMPLES_PER_KEY_FRAME,
                      window=torch.hann_window(SAMPLES_PER_KEY_FRAME), center=False,
                      return_complex=True).abs().pow(2)  # (bins, N)
    freqs = torch.linspace(0, SAMPLE_RATE / 2, spec.shape[0])
    bands = torch.stack([spec[(freqs >= lo) & (freqs < hi)].sum(0) for lo, hi in BANDS])
    shares = bands / bands.sum(0).clamp_min(1e-10)
    centroid = (freqs[:, None] * spec).sum(0) / spec.sum(0).clamp_min(1e-10)
    return rms, shares, centroid


def controls(samples: np.ndarray, *, dynamic_scale: float, motion_scale: float,
             steps: int, seed: int) -> Controls:
    """Animation controls for ``samples`` (16 kHz float32); ``steps`` sets smoothing."""
    import torch

    rms, shares, centroid = band_features(samples)
    passes = min(MAX_PASSES, max(1, round(steps / 25)))
    db = 20 * torch.log10(rms + 1e-8)
    peak_db = torch.quantile(db, 0.95)
    gate = ((db + 60) / 10).clamp(0, 1)  # below -60 dBFS: mouth shut
    loud = ((db - peak_db + 30) / 30).clamp(0, 1.1) * gate  # 30 dB under the peaks: shut
    voiced = (shares[1] / 0.8).clamp(0, 1)  # formant energy: vowels open the jaw
    bright = ((centroid - 1500) / 3000).clamp(0, 1)  # sibilants: lips spread, jaw less
    jaw = smooth(loud.pow(1.5) * (0.35 + 0.65 * voiced) * (1 - 0.4 * bright), passes)
    stretch = smooth((loud * (0.4 * shares[2] / 0.3 + 0.6 * bright)).clamp(0, 1), passes)
    n = rms.shape[0]
    envelope = smooth(loud, 6 * passes)
    noise = _smooth_noise(n, 4, seed)
    m = float(motion_scale)
    angle = m * math.radians(2.0) * (0.8 * noise[0] + 0.4 * (envelope - envelope.mean()))
    shift_x = m * 0.012 * noise[1]
    shift_y = m * (0.008 * noise[2] + 0.012 * (envelope - envelope.mean()))
    zoom = 1 + m * 0.012 * noise[3]
    jaw = (jaw * float(dynamic_scale)).clamp(0, 1.5)
    return Controls(*(double_rate(v.float()) for v in (jaw, stretch, angle, shift_x,
                                                        shift_y, zoom)))
