"""Render frames of a portrait from controls: head affine + jaw/lip warp + mouth interior.

Each output pixel is mapped back through the head motion (roll, shift, zoom about the
face centre, one ``affine_grid``), then through a fixed jaw/lip field scaled per frame:
the lower face is pulled down by up to ``JAW_DROP`` of the face height, the upper lip
lifts a little, the lip corners spread. The gap that opens between the lips is shaded
as a mouth interior, computed only in a small box around the mouth.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from pipeline.engines.motion import Controls

#: Geometry as fractions of the detected face box (Haar boxes: brows to chin).
MOUTH_Y, MOUTH_HALF_WIDTH, CHIN_Y = 0.80, 0.21, 1.08
#: Jaw drop at jaw = 1, and the depth over which it ramps in (slope < 1: no folding).
JAW_DROP, JAW_RAMP = 0.09, 0.16
#: Shading of the mouth interior (RGB gains): teeth near the top, then the dark cavity.
TEETH, CAVITY = (0.95, 0.93, 0.9), (0.32, 0.13, 0.13)


class FaceWarp:
    """Holds the portrait and the jaw/lip field on the device; renders frame batches."""

    def __init__(self, rgb: np.ndarray, face_box: tuple[int, int, int, int],
                 device: torch.device) -> None:
        import torch

        self.h, self.w = rgb.shape[:2]
        self.device = device
        # contiguous and writable (a read-only array makes torch warn on every render)
        image = torch.from_numpy(np.require(rgb, requirements=["C", "W"])).to(device)
        self.image = image.permute(2, 0, 1).float().div(255).unsqueeze(0)
        x1, y1, x2, y2 = face_box
        self.fw, self.fh = float(x2 - x1), float(y2 - y1)
        self.center = ((x1 + x2) / 2, (y1 + y2) / 2)
        self.mouth = ((x1 + x2) / 2, y1 + MOUTH_Y * self.fh)
        self.field = self._field(y1 + CHIN_Y * self.fh).unsqueeze(0)
        self.teeth = torch.tensor(TEETH, device=device).view(1, 3, 1, 1)
        self.cavity = torch.tensor(CAVITY, device=device).view(1, 3, 1, 1)

    def _field(self, chin_y: float) -> torch.Tensor:
        """(2, H, W): normalized source offsets per unit of lip stretch (x) and jaw (y)."""
        import torch

        ys = torch.arange(self.h, dtype=torch.float32, device=self.device).view(-1, 1)
        xs = torch.arange(self.w, dtype=torch.float32, device=self.device).view(1, -1)
        (mx, my), fw, fh = self.mouth, self.fw, self.fh
        v = ys - my
        across = torch.exp(-((xs - mx) / (0.55 * fw)) ** 2)
        ramp = (v / (JAW_RAMP * fh)).clamp(0, 1) * (1 - ((ys - chin_y) / (0.4 * fh)).clamp(0, 1))
        lift = 0.2 * torch.exp(-((v + 0.03 * fh) / (0.05 * fh)) ** 2)
        jaw = JAW_DROP * fh * across * (ramp - lift)  # pixels the content moves down
        lips = torch.exp(-(v / (0.12 * fh)) ** 2 - ((xs - mx) / (0.4 * fw)) ** 2)
        spread = 0.15 * (xs - mx) * lips  # pixels the content moves outward
        return torch.stack((spread * 2 / self.w, jaw * 2 / self.h))

    def _theta(self, c: Controls, sl: slice) -> torch.Tensor:
        """(B, 2, 3) affine from output to source normalized coordinates (head motion)."""
        import torch

        sx, sy = self.w / 2, self.h / 2
        ox, oy = self.center[0] - (sx - 0.5), self.center[1] - (sy - 0.5)  # centre - origin
        a, z = c.angle[sl].double(), c.zoom[sl].double()
        cos, sin = a.cos() / z, a.sin() / z
        tx, ty = c.shift_x[sl].double() * self.w, c.shift_y[sl].double() * self.h
        theta = torch.stack((
            torch.stack((cos, sin * sy / sx, (ox - cos * (ox + tx) - sin * (oy + ty)) / sx), -1),
            torch.stack((-sin * sx / sy, cos, (oy + sin * (ox + tx) - cos * (oy + ty)) / sy), -1),
        ), 1)
        return theta.float().to(self.device)

    def _mouth_box(self, c: Controls, sl: slice) -> tuple[int, int, int, int]:
        """Output-pixel box holding the mouth interior in every frame of the batch."""
        (mx, my), half = self.mouth, MOUTH_HALF_WIDTH * self.fw * 1.2
        drop = JAW_DROP * self.fh * float(c.jaw[sl].max())
        qx, qy = np.array([mx - half, mx + half]), np.array([my - 2, my + drop + 2])
        cx, cy = self.center
        xs, ys = [], []
        for a, z, tx, ty in zip(c.angle[sl].tolist(), c.zoom[sl].tolist(),
                                c.shift_x[sl].tolist(), c.shift_y[sl].tolist()):
            for x in qx:
                for y in qy:  # forward head motion of the box corners
                    dx, dy = (x - cx) * z, (y - cy) * z
                    xs.append(cx + tx * self.w + math.cos(a) * dx - math.sin(a) * dy)
                    ys.append(cy + ty * self.h + math.sin(a) * dx + math.cos(a) * dy)
        x0, x1 = max(0, int(min(xs)) - 2), min(self.w, int(max(xs)) + 3)
        y0, y1 = max(0, int(min(ys)) - 2), min(self.h, int(max(ys)) + 3)
        return x0, y0, max(x0, x1), max(y0, y1)

    def render(self, c: Controls, start: int, stop: int) -> torch.Tensor:
        """Frames ``start:stop`` as uint8 (B, H, W, 3) on the device."""
        import torch
        import torch.nn.functional as F

        sl = slice(start, stop)
        batch = stop - start
        jaw = c.jaw[sl].to(self.device).view(-1, 1, 1, 1)
        stretch = c.stretch[sl].to(self.device).view(-1, 1, 1, 1)
        q = F.affine_grid(self._theta(c, sl), [batch, 3, self.h, self.w], align_corners=False)
        offsets = F.grid_sample(self.field.expand(batch, -1, -1, -1), q, mode="bilinear",
                                padding_mode="zeros", align_corners=False)
        offsets = offsets.permute(0, 2, 3, 1) * torch.stack((stretch, jaw), -1).view(-1, 1, 1, 2)
        grid = q - offsets
        frames = F.grid_sample(self.image.expand(batch, -1, -1, -1), grid, mode="bilinear",
                               padding_mode="border", align_corners=False)
        x0, y0, x1, y1 = self._mouth_box(c, sl)
        if x1 > x0 and y1 > y0:
            self._shade_mouth(frames[:, :, y0:y1, x0:x1], q[:, y0:y1, x0:x1], jaw, stretch)
        frames = frames.mul_(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
        return frames.permute(0, 2, 3, 1).contiguous()

    def _shade_mouth(self, frames: torch.Tensor, q: torch.Tensor, jaw: torch.Tensor,
                     stretch: torch.Tensor) -> None:
        """Darken, in place, the ellipse between the lips that the jaw opened."""
        qx = ((q[..., 0] + 1) * self.w - 1) / 2
        qy = ((q[..., 1] + 1) * self.h - 1) / 2
        jaw, stretch = jaw.view(-1, 1, 1), stretch.view(-1, 1, 1)
        (mx, my), drop = self.mouth, JAW_DROP * self.fh * jaw
        half_w = (MOUTH_HALF_WIDTH * self.fw * (0.75 + 0.25 * jaw.clamp(max=1))
                  * (1 + 0.15 * stretch))
        v = qy - my
        r = ((qx - mx) / half_w) ** 2 + ((v - drop / 2) / (drop / 2).clamp_min(0.5)) ** 2
        edge = ((1 - r) / 0.6).clamp(0, 1)
        alpha = (edge * edge * (3 - 2 * edge) * (drop / 1.5).clamp(0, 1)).unsqueeze(1)
        depth = (v / (0.4 * drop).clamp_min(1e-3)).clamp(0, 1).unsqueeze(1)
        shade = self.teeth * (1 - depth) + self.cavity * depth
        frames.mul_(1 - alpha * (1 - shade))
