"""The synthetic conveyor-belt scene renderer: one cardboard package per image (the dataset
plumbing, splits, source and writer, is in :mod:`raysearch.data.synthetic`).

Every sample is a small 3D scene rendered with a pinhole camera: a belt (dark rubber with
streaks and splice seams, or a light modular plastic belt with slots) between two side rails
with rollers in the gaps, and one box standing on it. Half the samples are top views (camera
looking straight down: one face, flap seam, tape), half side views (oblique camera: two or
three faces with their own shading). Some boxes are damaged: dents and creases (shading only),
torn corners (a bite out of the outline: the mask loses it too). Lighting varies (brightness
gradient, vignette, colour temperature, a soft shadow on the belt that is *not* package),
and the image gets mild noise and blur.

The mask is the package's exact silhouette: the convex hull of the box's projected corners
minus any torn bite, rasterized once; the box pixels are composited through that same mask,
so image and mask agree to the pixel (before the final blur).

Everything is drawn from one ``numpy.random.Generator`` seeded by the sample's seed: the same
seed gives the same bytes on every run.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["VIEWS", "render_sample"]

VIEWS = ("top", "side")

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT


# --------------------------------------------------------------------------- geometry helpers


class _Camera:
    """Pinhole camera; rows of R are the camera's right, down and forward axes in world frame."""

    def __init__(self, R: np.ndarray, C: np.ndarray, f: float, cx: float, cy: float, near: float):
        self.R, self.C, self.f, self.cx, self.cy, self.near = R, C, f, cx, cy, near

    def to_cam(self, P: np.ndarray) -> np.ndarray:
        return (np.asarray(P, dtype=np.float64) - self.C) @ self.R.T

    def project(self, P: np.ndarray) -> np.ndarray:
        """Project points (..., 3) that are in front of the camera to pixels (..., 2)."""
        Q = self.to_cam(P)
        z = np.maximum(Q[..., 2], 1e-6)
        return np.stack([self.f * Q[..., 0] / z + self.cx, self.f * Q[..., 1] / z + self.cy], -1)

    def project_poly(self, P: np.ndarray) -> np.ndarray | None:
        """Project a planar polygon (N, 3), clipped against the near plane; None if all behind."""
        Q = self.to_cam(P)
        if Q[:, 2].min() < self.near:
            Q = _clip_near(Q, self.near)
            if len(Q) < 3:
                return None
        return np.stack([self.f * Q[:, 0] / Q[:, 2] + self.cx, self.f * Q[:, 1] / Q[:, 2] + self.cy], -1)

    def project_many(self, P: np.ndarray, W: int | None = None, H: int | None = None) -> list:
        """Project polygons (K, N, 3) at once; those crossing the near plane are clipped one by one.
        With W and H, polygons wholly outside the frame are dropped."""
        Q = self.to_cam(P)
        z = Q[..., 2]
        front = z.min(1) >= self.near
        zz = np.maximum(z, 1e-6)
        p2 = np.stack([self.f * Q[..., 0] / zz + self.cx, self.f * Q[..., 1] / zz + self.cy], -1)
        keep = front
        if W is not None and H is not None:
            lo, hi = p2.min(1), p2.max(1)
            keep = keep & (hi[:, 0] > -2) & (lo[:, 0] < W + 2) & (hi[:, 1] > -2) & (lo[:, 1] < H + 2)
        out = list(p2[keep])
        for k in np.nonzero(~front)[0]:
            p = self.project_poly(P[k])
            if p is not None:
                out.append(p)
        return out

    def depth(self, P: np.ndarray) -> np.ndarray:
        return self.to_cam(P)[..., 2]


def _clip_near(Q: np.ndarray, near: float) -> np.ndarray:
    out = []
    n = len(Q)
    for k in range(n):
        a, b = Q[k], Q[(k + 1) % n]
        ina, inb = a[2] >= near, b[2] >= near
        if ina:
            out.append(a)
        if ina != inb:
            t = (near - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out).reshape(-1, 3)


def _look_at(C: np.ndarray, target: np.ndarray, roll: float) -> np.ndarray:
    fwd = target - C
    fwd = fwd / np.linalg.norm(fwd)
    up = np.array([0.0, 0.0, 1.0]) if abs(fwd[2]) < 0.95 else np.array([0.0, 1.0, 0.0])
    right = np.cross(fwd, up)
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    c, s = np.cos(roll), np.sin(roll)
    return np.stack([c * right + s * down, -s * right + c * down, fwd])


def _ipts(p2: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(p2) * _ONE).astype(np.int32)


def _fill(img: np.ndarray, polys, color, aa: bool = False) -> None:
    polys = [p for p in polys if p is not None and len(p) >= 3]
    if polys:
        same = all(len(p) == len(polys[0]) for p in polys)
        pts = list(_ipts(np.stack(polys))) if same else [_ipts(p) for p in polys]
        cv2.fillPoly(img, pts, color, cv2.LINE_AA if aa else cv2.LINE_8, _SHIFT)


def _rect3(origin, e1, e2, u0, u1, v0, v1) -> np.ndarray:
    """Corners of the rectangle [u0,u1]x[v0,v1] in the plane origin + u*e1 + v*e2 (e1, e2 unit)."""
    uv = np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]], dtype=np.float64)
    return origin + uv[:, :1] * e1 + uv[:, 1:] * e2


def _rgb(h: float, s: float, v: float) -> np.ndarray:
    """HSV (h in degrees, s and v in 0..1) to an RGB float triple in 0..255."""
    px = np.array([[[h / 2.0, s * 255.0, v * 255.0]]], dtype=np.float32)
    return cv2.cvtColor(px.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64)


def _col(c) -> tuple[float, float, float]:
    c = np.clip(np.asarray(c, dtype=np.float64), 0, 255)
    return (float(c[0]), float(c[1]), float(c[2]))


def _lowres_noise(rng: np.random.Generator, shape_hw: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth noise (zero mean, ~unit std) of shape_hw from a coarse grid of ``cells`` per side."""
    h, w = shape_hw
    gh = max(2, int(round(cells * h / max(h, w))) + 1)
    gw = max(2, int(round(cells * w / max(h, w))) + 1)
    g = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)


def _blur_wrap(tile: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Gaussian blur of a tile that stays seamless when tiled."""
    p = 8
    big = np.pad(tile, ((p, p), (p, p)), mode="wrap")
    return cv2.GaussianBlur(big, (0, 0), sigmaX=sx, sigmaY=sy)[p:-p, p:-p]


def _tiled(tile: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """``tile`` repeated to cover h x w, starting at a random offset (a view, not a copy)."""
    th, tw = tile.shape[:2]
    t = np.roll(tile, (int(rng.integers(th)), int(rng.integers(tw))), (0, 1))
    return cv2.repeat(t, -(-h // th), -(-w // tw))[:h, :w]


# --------------------------------------------------------------------------- the scene


class _Box:
    """A box of size L x D x Hh standing on the belt at (bx, by), turned by yaw around z."""

    def __init__(self, bx: float, by: float, yaw: float, L: float, D: float, Hh: float):
        self.L, self.D, self.Hh = L, D, Hh
        self.ex = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        self.ey = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
        self.ez = np.array([0.0, 0.0, 1.0])
        self.center = np.array([bx, by, 0.0])
        o = self.center - self.ex * L / 2 - self.ey * D / 2  # the (-x, -y, bottom) corner
        ex, ey, ez = self.ex, self.ey, self.ez
        # name: (origin, e1, len1, e2, len2, outward normal)
        self.faces = {
            "top": (o + ez * Hh, ex, L, ey, D, ez),
            "+x": (o + ex * L, ey, D, ez, Hh, ex),
            "-x": (o, ey, D, ez, Hh, -ex),
            "+y": (o + ey * D, ex, L, ez, Hh, ey),
            "-y": (o, ex, L, ez, Hh, -ey),
        }
        corners = []
        for sz in (0.0, Hh):
            for su, sv in ((0, 0), (1, 0), (1, 1), (0, 1)):
                corners.append(o + ex * L * su + ey * D * sv + ez * sz)
        self.corners = np.array(corners)

    def face_poly(self, name: str) -> np.ndarray:
        o, e1, l1, e2, l2, _ = self.faces[name]
        return _rect3(o, e1, e2, 0, l1, 0, l2)

    def face_pts(self, name: str, uv: np.ndarray) -> np.ndarray:
        o, e1, _, e2, _, _ = self.faces[name]
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        return o + uv[:, :1] * e1 + uv[:, 1:] * e2

    def visible(self, C: np.ndarray) -> list[str]:
        out = []
        for name, (o, e1, l1, e2, l2, n) in self.faces.items():
            mid = o + e1 * l1 / 2 + e2 * l2 / 2
            if float(np.dot(n, C - mid)) > 1e-6:
                out.append(name)
        return out

    def footprint_extent_y(self) -> float:
        return abs(self.ex[1]) * self.L / 2 + abs(self.ey[1]) * self.D / 2


def _choose_camera(rng, view, box: _Box, W, H):
    """Camera looking at the box; returns the camera (principal point still centred)."""
    hfov = np.deg2rad(rng.uniform(45, 65))
    f = (W / 2) / np.tan(hfov / 2)
    target_frac = rng.uniform(0.25, 0.52)  # box diagonal as a fraction of the image width
    if view == "top":
        diag = np.hypot(box.L, box.D)
        dist = f * diag / (target_frac * W)
        tilt = np.deg2rad(rng.uniform(0, 5))
        az = rng.uniform(0, 2 * np.pi)
        target = box.center + np.array([0.0, 0.0, box.Hh])
        C = target + dist * np.array([np.sin(tilt) * np.cos(az), np.sin(tilt) * np.sin(az), np.cos(tilt)])
        R = _look_at(C, target, np.deg2rad(rng.uniform(-4, 4)))
    else:
        diag = float(np.sqrt(box.L**2 + box.D**2 + box.Hh**2))
        dist = f * diag / (target_frac * W)
        pitch = np.deg2rad(rng.uniform(18, 45))
        yaw = np.deg2rad(rng.uniform(-12, 12))
        target = box.center + np.array([0.0, 0.0, box.Hh * 0.5])
        fwd = np.array([np.sin(yaw) * np.cos(pitch), np.cos(yaw) * np.cos(pitch), -np.sin(pitch)])
        C = target - dist * fwd
        R = _look_at(C, target, np.deg2rad(rng.uniform(-3, 3)))
    return _Camera(R, C, f, W / 2, H / 2, near=max(1.0, 0.05 * dist)), target, dist


def _place(cam: _Camera, box: _Box, rng, W, H, s) -> np.ndarray:
    """Back the camera off until the box fits, then shift the principal point so the box lands at
    a random place that keeps it (mostly) inside the frame. Returns the projected corners."""
    for _ in range(4):
        p = cam.project(box.corners)
        bw, bh = np.ptp(p[:, 0]), np.ptp(p[:, 1])
        k = max(bw / (0.9 * W), bh / (0.9 * H))
        if k <= 1.0:
            break
        fwd = cam.R[2]
        target = cam.C + fwd * float(cam.depth(box.center[None])[0])
        cam.C = target - fwd * (float(np.linalg.norm(target - cam.C)) * k * 1.05)
    p = cam.project(box.corners)
    x0, y0 = p.min(0)
    x1, y1 = p.max(0)
    margin_x = margin_y = 6 * s
    if rng.random() < 0.12:  # now and then let the box touch or cross the frame edge a little
        margin_x, margin_y = -0.1 * (x1 - x0), -0.1 * (y1 - y0)
    lo_x, hi_x = margin_x - x0, W - margin_x - x1
    lo_y, hi_y = margin_y - y0, H - margin_y - y1
    dx = rng.uniform(lo_x, hi_x) if hi_x > lo_x else (lo_x + hi_x) / 2
    dy = rng.uniform(lo_y, hi_y) if hi_y > lo_y else (lo_y + hi_y) / 2
    cam.cx += dx
    cam.cy += dy
    return cam.project(box.corners)


def _visible_x_range(cam: _Camera, W, H, y_far, y_near, bx) -> tuple[float, float]:
    xs = []
    us = np.linspace(0, W, 5)
    vs = np.linspace(0, H, 5)
    border = [(u, 0) for u in us] + [(u, H) for u in us] + [(0, v) for v in vs] + [(W, v) for v in vs]
    for u, v in border:
        d = cam.R.T @ np.array([(u - cam.cx) / cam.f, (v - cam.cy) / cam.f, 1.0])
        ts = []
        if d[2] < -1e-9:
            ts.append(-cam.C[2] / d[2])
        if d[1] > 1e-9:
            ts.append((y_far - cam.C[1]) / d[1])
        if d[1] < -1e-9:
            ts.append((y_near - cam.C[1]) / d[1])
        ts = [t for t in ts if t > 0]
        if ts:
            xs.append(cam.C[0] + min(ts) * d[0])
    if not xs:
        return bx - 500.0, bx + 500.0
    lo, hi = min(xs), max(xs)
    pad = 0.15 * (hi - lo) + 20
    span = 8 * (y_far - y_near) + 400
    return max(lo - pad, bx - span), min(hi + pad, bx + span)


def _quads(xa, xb, ya, yb, z) -> np.ndarray:
    """Axis-aligned rectangles in the plane z (all arguments broadcast): (K, 4, 3)."""
    xa, xb, ya, yb, z = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (xa, xb, ya, yb, z)))
    P = np.empty(xa.shape + (4, 3))
    P[:, 0, 0], P[:, 0, 1] = xa, ya
    P[:, 1, 0], P[:, 1, 1] = xb, ya
    P[:, 2, 0], P[:, 2, 1] = xb, yb
    P[:, 3, 0], P[:, 3, 1] = xa, yb
    P[:, :, 2] = z[:, None]
    return P


def _draw_background(img, rng, cam: _Camera, view, W, H, s, light, Bw, bx):
    """Surroundings, rails, rollers and the belt surface into img (uint8 RGB). Returns belt style."""
    # surroundings: a vertical gradient between a wall colour (top) and a floor colour (bottom)
    wall = _rgb(rng.uniform(180, 240), rng.uniform(0.02, 0.15), rng.uniform(0.25, 0.6))
    floor = _rgb(rng.uniform(20, 200), rng.uniform(0.02, 0.2), rng.uniform(0.12, 0.35))
    t = np.linspace(0, 1, H, dtype=np.float32)[:, None]
    if view == "top":
        t = np.full_like(t, 0.8)
    grad = (wall[None, :] * (1 - t) + floor[None, :] * t).astype(np.uint8)  # (H, 3)
    img[:] = grad[:, None, :]

    y_far, y_near = Bw / 2, -Bw / 2
    gap = rng.uniform(1.5, 4.0)
    rail_w = rng.uniform(3.0, 8.0)
    x0, x1 = _visible_x_range(cam, W, H, y_far + gap + rail_w, y_near - gap - rail_w, bx)

    def fill(P, color, aa=False):
        _fill(img, cam.project_many(P), _col(color), aa)

    # side rails: the far one before the belt, the near one after it (painter's order)
    rail_c = [np.array([165.0, 168.0, 172.0]), np.array([60.0, 90.0, 140.0]), np.array([75.0, 77.0, 80.0]),
              np.array([205.0, 170.0, 45.0]), np.array([120.0, 125.0, 118.0])][int(rng.integers(5))]
    rail_c = rail_c * rng.uniform(0.85, 1.1)
    h_far = rng.uniform(3, 15) if view == "side" else rng.uniform(2, 8)
    h_near = rng.uniform(2, 6)
    bolt_every = rng.uniform(15, 35)

    def rail(ya, yb, h, z_low):
        top = _quads(x0, x1, ya, yb, h)[0]
        faces = [(top, np.array([0.0, 0.0, 1.0]), 1.0)]
        for y, ny in ((ya, -1.0), (yb, 1.0)):
            faces.append((np.array([[x0, y, z_low], [x1, y, z_low], [x1, y, h], [x0, y, h]]), np.array([0.0, ny, 0.0]), 0.8))
        for poly, n, k in faces:
            mid = poly.mean(0)
            mid[0] = cam.C[0]
            if np.dot(n, cam.C - mid) <= 0:
                continue
            col = rail_c * light(k) * (1.0 if n[2] > 0 else 0.85)
            fill(poly[None], col)
            if n[2] == 0 and view == "side" and h - z_low > 4:  # bolts / roller ends along the face
                bxs = np.arange(x0 + rng.uniform(0, bolt_every), x1, bolt_every)
                P = np.stack([bxs, np.full_like(bxs, poly[0, 1]), np.full_like(bxs, (h + z_low) / 2)], 1)
                dz = cam.depth(P)
                ok = dz > cam.near
                pts, rad = cam.project(P[ok]), cam.f * 0.6 / dz[ok]
                for (u, v), r in zip(pts, rad):
                    if -20 < u < W + 20 and -20 < v < H + 20 and r > 0.8:
                        cv2.circle(img, (int(u * _ONE), int(v * _ONE)), int(r * _ONE), _col(col * 0.55), -1,
                                   cv2.LINE_AA, _SHIFT)
                        cv2.circle(img, (int((u - 0.3 * r) * _ONE), int((v - 0.3 * r) * _ONE)), int(0.35 * r * _ONE),
                                   _col(col * 1.3), -1, cv2.LINE_AA, _SHIFT)
            if n[2] > 0:  # a bright edge along the rail's top
                fill(_quads(x0, x1, ya, ya + 0.3, h + 0.01), col * 1.2)

    rail(y_far + gap, y_far + gap + rail_w, h_far, -1.0)

    # gaps between belt and rails, with the rollers showing
    roll_c = np.full(3, rng.uniform(100, 170)) * np.array([1.0, 1.0, rng.uniform(1.0, 1.08)]) * light(0.7)
    pitch_r = rng.uniform(5.0, 12.0)
    ks = np.arange(np.floor((x0 - bx) / pitch_r), np.ceil((x1 - bx) / pitch_r) + 1) * pitch_r + bx
    ks = ks + rng.uniform(0, pitch_r)
    r = pitch_r * rng.uniform(0.3, 0.42)
    fill(_quads(x0, x1, [y_far, y_near - gap], [y_far + gap, y_near], -1.0), np.full(3, rng.uniform(10, 30)))
    for ya, yb in ((y_far, y_far + gap), (y_near - gap, y_near)):
        fill(_quads(ks - r, ks + r, ya, yb, -1.5), roll_c)
        fill(_quads(ks - 0.25 * r, ks + 0.15 * r, ya, yb, -1.4), roll_c * 1.35)

    # the belt surface
    style = "rubber" if rng.random() < 0.65 else "modular"
    if style == "rubber":
        base_c = rng.uniform(28, 75) * np.array([1.0, rng.uniform(0.97, 1.03), rng.uniform(0.95, 1.1)]) * light(1.0)
        fill(_quads(x0, x1, y_near, y_far, 0.0), base_c)
        # longitudinal wear streaks, each its own shade
        n = int(rng.integers(15, 40))
        ys = rng.uniform(y_near, y_far, n)
        ye = np.minimum(ys + rng.uniform(0.2, 2.0, n), y_far)
        for P, d in zip(_quads(x0, x1, ys, ye, 0.0), rng.uniform(-10, 10, n)):
            fill(P[None], base_c + d)
        # splice seams crossing the belt (they move with it: random phase), skewed or square
        pitch = rng.uniform(60, 170)
        skew = np.tan(np.deg2rad(rng.uniform(-30, 30))) if rng.random() < 0.5 else 0.0
        seam_w = rng.uniform(0.4, 1.2)
        xs = np.arange(x0 - pitch + rng.uniform(0, pitch), x1 + pitch, pitch)
        seams = _quads(xs, xs + seam_w, y_near, y_far, 0.0)
        seams[:, [0, 1], 0] += skew * y_near
        seams[:, [2, 3], 0] += skew * y_far
        fill(seams, base_c * 0.55)
        if rng.random() < 0.5:  # metal lacing: staples across the seam
            yy = np.arange(y_near + 1.5, y_far - 1.0, 2.5)
            Xg, Yg = np.meshgrid(xs, yy, indexing="ij")
            X, Y = Xg.ravel() + skew * Yg.ravel(), Yg.ravel()
            fill(_quads(X - 0.8, X + seam_w + 0.8, Y, Y + 0.6, 0.05), np.full(3, 150.0) * light(1.0))
        else:  # a lighter vulcanized band beside the seam
            band = seams.copy()
            band[:, :, 0] += seam_w
            band[:, [1, 2], 0] += 0.3
            fill(band, base_c * 1.25)
    else:
        base_c = rng.uniform(105, 180) * np.array([1.0, rng.uniform(0.98, 1.03), rng.uniform(0.98, 1.1)]) * light(1.0)
        fill(_quads(x0, x1, y_near, y_far, 0.0), base_c)
        px, py = rng.uniform(3.5, 7.0), rng.uniform(3.0, 6.0)
        xs = np.arange(x0 - px + rng.uniform(0, px), x1 + px, px)
        ys = np.arange(y_near + py * 0.5, y_far - py * 0.5, py)
        slot_c = np.full(3, rng.uniform(15, 45))
        if len(xs) * len(ys) < 8000 and len(ys):
            Xg, Yg = np.meshgrid(xs, ys, indexing="ij")
            flip = (np.where(np.arange(len(xs)) % 2 == 0, 1.0, -1.0)[:, None] * np.ones(len(ys))).ravel()
            X, Y = Xg.ravel(), Yg.ravel()
            a, b, ln = 0.30 * px, 0.15 * px, 0.36 * py
            P = np.zeros((len(X), 4, 3))
            P[:, 0, 0], P[:, 0, 1] = X - a, Y - flip * ln
            P[:, 1, 0], P[:, 1, 1] = X + a, Y - flip * ln
            P[:, 2, 0], P[:, 2, 1] = X + b, Y + flip * ln
            P[:, 3, 0], P[:, 3, 1] = X - b, Y + flip * ln
            _fill(img, cam.project_many(P, W, H), _col(slot_c))
        fill(_quads(xs - px / 2 - 0.15, xs - px / 2 + 0.15, y_near, y_far, 0.02), base_c * 0.7)  # hinges

    rail(y_near - gap - rail_w, y_near - gap, h_near, -rng.uniform(6, 15))
    return style


# --------------------------------------------------------------------------- the package


_TAPES = {
    "brown": (np.array([168.0, 112.0, 55.0]), 0.82),
    "clear": (np.array([240.0, 232.0, 215.0]), 0.22),
    "white": (np.array([238.0, 236.0, 228.0]), 0.9),
}


def _blend_poly(img: np.ndarray, p2: np.ndarray | None, color, alpha: float) -> None:
    """Alpha-blend a filled polygon into img (uint8 RGB), touching only its bounding box."""
    if p2 is None or len(p2) < 3 or alpha <= 0:
        return
    H, W = img.shape[:2]
    x0, y0 = np.floor(p2.min(0)).astype(int) - 1
    x1, y1 = np.ceil(p2.max(0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if x1 <= x0 or y1 <= y0:
        return
    sub = img[y0:y1, x0:x1]
    tmp = sub.copy()
    cv2.fillPoly(tmp, [_ipts(p2 - np.array([x0, y0]))], _col(color), cv2.LINE_AA, _SHIFT)
    cv2.addWeighted(tmp, float(alpha), sub, 1.0 - float(alpha), 0.0, dst=sub)


def _draw_box(layer, rng, cam: _Camera, box: _Box, view, light, s, meta):
    """Faces and decorations of the box into ``layer`` (uint8 RGB). Returns the visible faces."""
    vis = box.visible(cam.C)
    kind = "white" if rng.random() < 0.2 else "kraft"
    if kind == "kraft":
        base = _rgb(rng.uniform(24, 38), rng.uniform(0.32, 0.62), rng.uniform(0.6, 0.9))
    else:
        base = _rgb(rng.uniform(30, 60), rng.uniform(0.0, 0.06), rng.uniform(0.86, 0.97))
    meta["package"] = kind
    face_col = {}
    for name in vis:
        n = box.faces[name][5]
        face_col[name] = base * light(n) * rng.uniform(0.97, 1.03)

    # fill the silhouette first (so rasterization seams between faces never show the belt)
    hull = cv2.convexHull(cam.project(box.corners).astype(np.float32)).reshape(-1, 2)
    _fill(layer, [hull], _col(np.mean(list(face_col.values()), 0)))
    projs = {name: cam.project(box.face_poly(name)) for name in vis}
    for name in vis:
        _fill(layer, [projs[name]], _col(face_col[name]), aa=True)

    def on(name, u0, u1, v0, v1):
        o, e1, l1, e2, l2, _ = box.faces[name]
        u0, u1 = max(0.0, u0), min(l1, u1)
        v0, v1 = max(0.0, v0), min(l2, v1)
        if u1 <= u0 or v1 <= v0:
            return None
        return cam.project(_rect3(o, e1, e2, u0, u1, v0, v1))

    L, D, Hh = box.L, box.D, box.Hh
    tape = None
    if kind == "kraft":
        if "top" in vis:
            # the two outer flaps meet along the middle; one sits a little higher (lighter)
            _blend_poly(layer, on("top", 0, L, D / 2, D), (0, 0, 0), rng.uniform(0.02, 0.07))
            gap_w = rng.uniform(0.15, 0.5)
            _blend_poly(layer, on("top", 0, L, D / 2 - gap_w / 2, D / 2 + gap_w / 2), (30, 20, 10), 0.7)
            for v in (rng.uniform(0.5, 2.0), D - rng.uniform(0.5, 2.0)):  # flap fold creases
                _blend_poly(layer, on("top", 0, L, v - 0.15, v + 0.15), (40, 28, 15), 0.25)
        if rng.random() < 0.85:
            tape = str(rng.choice(list(_TAPES), p=[0.55, 0.25, 0.2]))
            tcol, ta = _TAPES[tape]
            tcol = tcol * rng.uniform(0.9, 1.05)
            wt = rng.uniform(4.5, 7.5)
            off = rng.uniform(-0.8, 0.8)
            over = min(rng.uniform(4, 10), Hh)
            strips = [("top", 0, L, D / 2 - wt / 2 + off, D / 2 + wt / 2 + off)]
            for end in ("+x", "-x"):
                strips.append((end, D / 2 - wt / 2 + off, D / 2 + wt / 2 + off, Hh - over, Hh))
            if rng.random() < 0.3:  # H-taping across both ends
                strips += [("top", 0, wt, 0, D), ("top", L - wt, L, 0, D)]
                for side in ("+y", "-y"):
                    strips += [(side, 0, wt, Hh - over, Hh), (side, L - wt, L, Hh - over, Hh)]
            for name, u0, u1, v0, v1 in strips:
                if name in vis:
                    p = on(name, u0, u1, v0, v1)
                    _blend_poly(layer, p, tcol * light(box.faces[name][5]), ta)
                    if tape != "white":  # a glossy sheen along the strip
                        if name == "top" and u1 - u0 > v1 - v0:
                            sheen = on(name, u0, u1, v0 + 0.25 * (v1 - v0), v0 + 0.4 * (v1 - v0))
                        else:
                            sheen = on(name, u0 + 0.25 * (u1 - u0), u0 + 0.4 * (u1 - u0), v0, v1)
                        _blend_poly(layer, sheen, (255, 250, 240), 0.12)
    else:  # a white printed carton with a coloured band at one end
        band = _rgb(rng.choice([150.0, 210.0, 0.0, 30.0, 280.0]) + rng.uniform(-10, 10), rng.uniform(0.5, 0.8),
                    rng.uniform(0.6, 0.85))
        bw = L * rng.uniform(0.15, 0.35)
        for name in vis:
            n = box.faces[name][5]
            if name in ("top", "+y", "-y"):
                p = on(name, L - bw, L, 0, 1e9)
            elif name == "+x":
                p = on(name, 0, 1e9, 0, 1e9)
            else:
                continue
            _fill(layer, [p], _col(band * light(n)), aa=True)
    meta["tape"] = tape

    # printed text lines / arrows on side faces, a shipping label, a sticker
    side_faces = [n for n in vis if n != "top"]
    for name in side_faces:
        if rng.random() < 0.4:
            o, e1, l1, e2, l2, n = box.faces[name]
            u, v = rng.uniform(0.1, 0.5) * l1, rng.uniform(0.3, 0.7) * l2
            for k in range(int(rng.integers(1, 4))):
                w_ = rng.uniform(0.2, 0.45) * l1
                _blend_poly(layer, on(name, u, u + w_, v + k * 1.8, v + k * 1.8 + 0.9), (35, 35, 40), 0.6)
    meta["label"] = False
    if rng.random() < 0.6:
        cands = [n for n in vis if min(box.faces[n][2], box.faces[n][4]) > 8]
        if cands:
            area = np.array([cv2.contourArea(projs[n].astype(np.float32)) for n in cands]) + 1
            name = cands[int(rng.choice(len(cands), p=area / area.sum()))]
            o, e1, l1, e2, l2, n = box.faces[name]
            lw, lh = min(rng.uniform(9, 15), 0.7 * l1), min(rng.uniform(7, 11), 0.7 * l2)
            u0, v0 = rng.uniform(0.05 * l1, l1 - lw - 0.05 * l1), rng.uniform(0.05 * l2, l2 - lh - 0.05 * l2)
            paper = np.array([248.0, 246.0, 238.0]) * rng.uniform(0.93, 1.0)
            _fill(layer, [on(name, u0, u0 + lw, v0, v0 + lh)], _col(paper * light(n)), aa=True)
            ink = _col(np.full(3, 30.0) * light(n))
            if rng.random() < 0.4:
                hdr = _rgb(rng.uniform(0, 360), 0.7, 0.8) * light(n)
                _fill(layer, [on(name, u0, u0 + lw, v0, v0 + 0.18 * lh)], _col(hdr), aa=True)
            # barcode
            bu0, bu1 = u0 + 0.1 * lw, u0 + 0.9 * lw
            bars, u = [], bu0
            while u < bu1:
                w_ = rng.choice([0.08, 0.12, 0.2, 0.3])
                if rng.random() < 0.55:
                    bars.append(on(name, u, min(u + w_, bu1), v0 + 0.58 * lh, v0 + 0.9 * lh))
                u += w_ + rng.choice([0.08, 0.12, 0.2])
            _fill(layer, bars, ink, aa=True)
            for k in range(3):  # address lines
                _fill(layer, [on(name, u0 + 0.1 * lw, u0 + rng.uniform(0.4, 0.85) * lw, v0 + (0.25 + 0.1 * k) * lh,
                                 v0 + (0.25 + 0.1 * k) * lh + 0.5)], _col(np.full(3, 90.0) * light(n)), aa=True)
            meta["label"] = True
    if rng.random() < 0.3 and vis:
        name = vis[int(rng.integers(len(vis)))]
        o, e1, l1, e2, l2, n = box.faces[name]
        r = min(rng.uniform(2.0, 4.0), 0.25 * min(l1, l2))
        c = np.array([rng.uniform(r, l1 - r), rng.uniform(r, l2 - r)])
        ang = np.linspace(0, 2 * np.pi, 20, endpoint=False)
        uv = c + r * np.stack([np.cos(ang), np.sin(ang)], 1)
        if rng.random() < 0.5:
            uv = c + r * np.array([[-1, -0.7], [1, -0.7], [1, 0.7], [-1, 0.7]])
        col = _rgb(rng.choice([0.0, 20.0, 50.0, 200.0]), 0.85, 0.9) * light(n)
        _fill(layer, [cam.project(box.face_pts(name, uv))], _col(col), aa=True)

    # edges: a thin dark line around each face, a highlight on the top's rim
    for name in vis:
        p = projs[name]
        cv2.polylines(layer, [_ipts(p)], True, _col(face_col[name] * 0.72), max(1, int(round(s))), cv2.LINE_AA, _SHIFT)
    if "top" in vis and view == "side":
        p = projs["top"]
        cv2.polylines(layer, [_ipts(p)], True, _col(face_col["top"] * 1.15), 1, cv2.LINE_AA, _SHIFT)
    return vis, projs, hull


def _damage_maps(rng, cam, box: _Box, vis, projs, roi, s, meta, damaged):
    """Dents (soft dark blobs with a highlight) and creases as a multiplicative shade map over roi."""
    x0, y0, x1, y1 = roi
    shade = np.ones((y1 - y0, x1 - x0), np.float32)
    meta["dents"] = meta["creases"] = 0
    if not damaged["dents"] and not damaged["creases"]:
        return shade
    dark = np.zeros_like(shade)
    lite = np.zeros_like(shade)
    area = np.array([cv2.contourArea(projs[n].astype(np.float32)) for n in vis]) + 1
    off = np.array([x0, y0], float)
    nd = int(rng.integers(1, 4)) if damaged["dents"] else 0
    for _ in range(nd):
        name = vis[int(rng.choice(len(vis), p=area / area.sum()))]
        o, e1, l1, e2, l2, n = box.faces[name]
        r = rng.uniform(0.08, 0.22) * min(l1, l2)
        c = np.array([rng.uniform(0.15, 0.85) * l1, rng.uniform(0.15, 0.85) * l2])
        ang = np.linspace(0, 2 * np.pi, 14, endpoint=False)
        rad = r * rng.uniform(0.7, 1.15, 14)
        th = rng.uniform(0, np.pi)
        sq = rng.uniform(0.45, 1.0)
        uv = np.stack([np.cos(ang) * rad, np.sin(ang) * rad * sq], 1)
        rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        uv = c + uv @ rot.T
        p = cam.project(box.face_pts(name, uv)) - off
        cv2.fillPoly(dark, [_ipts(p)], float(rng.uniform(0.5, 1.0)), cv2.LINE_8, _SHIFT)
        q = cam.project(box.face_pts(name, c + (uv - c) * 0.55 + r * 0.35 * np.array([np.cos(th), np.sin(th)]))) - off
        cv2.fillPoly(lite, [_ipts(q)], float(rng.uniform(0.4, 1.0)), cv2.LINE_8, _SHIFT)
    crease = np.zeros_like(shade)
    crease_hi = np.zeros_like(shade)
    nc = int(rng.integers(1, 3)) if damaged["creases"] else 0
    for _ in range(nc):
        name = vis[int(rng.choice(len(vis), p=area / area.sum()))]
        o, e1, l1, e2, l2, n = box.faces[name]
        # from one edge of the face towards the opposite one (not always all the way)
        a = np.array([rng.uniform(0.1, 0.9) * l1, 0.0])
        b = np.array([rng.uniform(0.1, 0.9) * l1, l2 * rng.uniform(0.4, 1.0)])
        if rng.random() < 0.5:
            a = np.array([0.0, rng.uniform(0.1, 0.9) * l2])
            b = np.array([l1 * rng.uniform(0.4, 1.0), rng.uniform(0.1, 0.9) * l2])
        mid = (a + b) / 2 + rng.normal(0, 0.03 * min(l1, l2), 2)
        uv = np.stack([a, mid, b])
        p = cam.project(box.face_pts(name, uv)) - off
        w = max(1, int(round(rng.uniform(1.5, 2.5) * s)))
        cv2.polylines(crease, [_ipts(p)], False, float(rng.uniform(0.5, 1.0)), w, cv2.LINE_AA, _SHIFT)
        cv2.polylines(crease_hi, [_ipts(p + 1.5 * w)], False, 1.0, w, cv2.LINE_AA, _SHIFT)
    box_px = max(x1 - x0, y1 - y0)
    if nd:
        sig = max(1.0, 0.012 * box_px)
        dark = cv2.GaussianBlur(dark, (0, 0), sig)
        lite = cv2.GaussianBlur(lite, (0, 0), sig)
        shade = shade - 0.38 * dark + 0.15 * np.maximum(lite - dark, 0)
    if nc:
        crease = cv2.GaussianBlur(crease, (0, 0), max(0.7, 1.0 * s))
        crease_hi = cv2.GaussianBlur(crease_hi, (0, 0), max(0.7, 1.0 * s))
        shade = shade - 0.3 * crease + 0.12 * np.maximum(crease_hi - crease, 0)
    meta["dents"], meta["creases"] = nd, nc
    return shade


def _tear(rng, hull: np.ndarray, s: float, W: int, H: int):
    """A jagged bite polygon around one corner of the silhouette (one inside the frame), and its
    torn edge (the path)."""
    n = len(hull)
    cen = hull.mean(0)
    inside = np.nonzero((hull[:, 0] >= 2) & (hull[:, 0] <= W - 3) & (hull[:, 1] >= 2) & (hull[:, 1] <= H - 3))[0]
    k = int(inside[rng.integers(len(inside))]) if len(inside) else int(rng.integers(n))
    v, prev, nxt = hull[k], hull[k - 1], hull[(k + 1) % n]
    l1, l2 = np.linalg.norm(prev - v), np.linalg.norm(nxt - v)
    size = np.ptp(hull, 0).max()
    d1 = min(rng.uniform(0.15, 0.4) * l1, 0.3 * size)
    d2 = min(rng.uniform(0.15, 0.4) * l2, 0.3 * size)
    p1 = v + (prev - v) * d1 / max(l1, 1e-6)
    p2 = v + (nxt - v) * d2 / max(l2, 1e-6)
    m = int(rng.integers(4, 9))
    t = np.sort(rng.uniform(0.05, 0.95, m))[:, None]
    chord = p2 - p1
    inward = cen - (p1 + p2) / 2
    inward = inward / max(np.linalg.norm(inward), 1e-6)
    jag = p1 + t * chord + inward * (rng.uniform(0.0, 0.35, (m, 1)) * np.linalg.norm(chord) + 1.0 * s)
    path = np.concatenate([p1[None], jag, p2[None]])
    out = v + (v - cen) / max(np.linalg.norm(v - cen), 1e-6) * 4 * s
    bite = np.concatenate([path, out[None]])
    return bite, path


# --------------------------------------------------------------------------- the sample


def render_sample(seed: int, hw: tuple[int, int] = (540, 960), view: str | None = None
                  ) -> tuple[np.ndarray, np.ndarray, dict]:
    """One synthetic sample: (image RGB uint8 HxWx3, mask uint8 HxW in {0,1}, meta).

    ``hw`` is (height, width), as everywhere in raysearch. ``view`` ("top" or "side") defaults to a draw from the seed.
    The same (seed, hw, view) always gives the same bytes.
    """
    H, W = int(hw[0]), int(hw[1])
    if W < 32 or H < 32:
        raise ValueError(f"hw={hw!r}: expected (height, width) of at least 32x32")
    if view is not None and view not in VIEWS:
        raise ValueError(f"view={view!r}: expected one of {VIEWS} or None")
    rng = np.random.default_rng(int(seed))
    if view is None:
        view = VIEWS[int(rng.integers(2))]
    s = float(np.sqrt(W * H / (960 * 540)))
    meta: dict = {"seed": int(seed), "view": view, "hw": (H, W)}

    # light: a direction for shading faces and casting the shadow, an ambient level
    az = rng.uniform(0, 2 * np.pi)
    el = np.deg2rad(rng.uniform(45, 80))
    Ldir = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    amb = rng.uniform(0.45, 0.65)

    def light(n):
        if np.isscalar(n):
            return amb + (1 - amb) * float(n)
        return amb + (1 - amb) * max(0.0, float(np.dot(n, Ldir)))

    # the box and the camera
    L = rng.uniform(22, 60)
    D = L * rng.uniform(0.45, 0.92)
    Hh = max(8.0, D * rng.uniform(0.35, 1.0))
    yaw = rng.uniform(0, np.pi) if view == "top" else rng.choice([0.0, np.pi / 2]) + np.deg2rad(rng.uniform(-35, 35))
    box0 = _Box(0, 0, yaw, L, D, Hh)
    Bw = max(60.0, max(L, D) * rng.uniform(1.5, 2.6))
    ey = box0.footprint_extent_y()
    free = Bw / 2 - ey - 2.0
    by = rng.uniform(-free, free) if free > 0 else 0.0
    bx = rng.uniform(-500, 500)
    box = _Box(bx, by, yaw, L, D, Hh)
    cam, _, _ = _choose_camera(rng, view, box, W, H)
    corners2d = _place(cam, box, rng, W, H, s)

    # background
    bg = np.empty((H, W, 3), np.uint8)
    meta["belt"] = _draw_background(bg, rng, cam, view, W, H, s, light, Bw, bx)

    # damage plan
    damaged = rng.random() < 0.5
    plan = {"dents": False, "creases": False, "torn": False}
    if damaged:
        while not any(plan.values()):
            plan = {"dents": rng.random() < 0.6, "creases": rng.random() < 0.45, "torn": rng.random() < 0.45}
    meta["damaged"] = damaged

    # the package layer and its mask
    layer = np.zeros((H, W, 3), np.uint8)
    vis, projs, hull = _draw_box(layer, rng, cam, box, view, light, s, meta)
    mask = np.zeros((H, W), np.uint8)
    cv2.fillPoly(mask, [_ipts(hull)], 1, cv2.LINE_8, _SHIFT)
    meta["box_polygon"] = [(float(x), float(y)) for x, y in hull]
    meta["box_area"] = int(cv2.countNonZero(mask))
    meta["visible_faces"] = list(vis)
    meta["torn"] = False
    if plan["torn"]:
        bite, path = _tear(rng, hull, s, W, H)
        edge = _col(np.array([225.0, 205.0, 165.0]) * light(1.0))
        cv2.polylines(layer, [_ipts(path)], False, edge, max(2, int(round(4 * s))), cv2.LINE_AA, _SHIFT)
        cv2.fillPoly(mask, [_ipts(bite)], 0, cv2.LINE_8, _SHIFT)
        meta["torn"] = True
        meta["bite_polygon"] = [(float(x), float(y)) for x, y in bite]

    # region of interest around the box for the per-box work
    ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if len(ys) == 0:  # cannot happen with the placement above; keep the contract anyway
        raise RuntimeError(f"synthetic sample seed={seed}: the package fell outside the frame")
    pad = int(6 * s) + 2
    roi = (max(0, xs[0] - pad), max(0, ys[0] - pad), min(W, xs[-1] + 1 + pad), min(H, ys[-1] + 1 + pad))

    # shadow on the belt: the box's corners pushed along the light onto z=0; it, the belt's smooth
    # blotches and the global lighting (gradient, vignette) are all built at 1/4 resolution
    q = 4
    hs, ws = -(-H // q), -(-W // q)
    ground = box.corners - box.corners[:, 2:3] / Ldir[2] * Ldir
    sh: np.ndarray = np.zeros((hs, ws), np.float32)
    sh_hull = cv2.convexHull(np.concatenate([cam.project(ground), corners2d[:4]]).astype(np.float32)).reshape(-1, 2)
    cv2.fillPoly(sh, [_ipts(sh_hull / q)], 1.0, cv2.LINE_8, _SHIFT)
    foot = cv2.convexHull(corners2d[:4].astype(np.float32)).reshape(-1, 2)
    cv2.fillPoly(sh, [_ipts(foot / q)], 1.3, cv2.LINE_8, _SHIFT)  # contact shadow
    box_px = float(np.ptp(hull, 0).max())
    sh = cv2.GaussianBlur(sh, (0, 0), max(0.8, rng.uniform(0.02, 0.06) * box_px / q))
    np.minimum(sh, 1.15, out=sh)

    yy, xx = np.mgrid[0:hs, 0:ws].astype(np.float32)
    yy, xx = yy / (hs - 1) - 0.5, xx / (ws - 1) - 0.5
    ga = rng.uniform(0, 2 * np.pi)
    lm = 1.0 + rng.uniform(0.05, 0.45) * (np.cos(ga) * xx + np.sin(ga) * yy)
    lm *= 1.0 - rng.uniform(0.0, 0.5) * (xx**2 + yy**2)
    lm *= rng.uniform(0.75, 1.2)

    if meta["belt"] == "rubber":
        g_amp, l_amp = rng.uniform(0.05, 0.12), rng.uniform(0.04, 0.1)
    else:
        g_amp, l_amp = rng.uniform(0.02, 0.05), rng.uniform(0.03, 0.07)
    bgf = (1.0 + l_amp * _lowres_noise(rng, (hs, ws), 12)) * (1.0 - rng.uniform(0.3, 0.6) * sh) * lm
    bg_fac = cv2.resize(bgf.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
    light_map = cv2.resize(lm.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)

    # fine grain: sensor noise everywhere, plus texture on the belt (streaky along it for rubber)
    tile = rng.standard_normal((128, 128)).astype(np.float32)
    if meta["belt"] == "rubber":
        tile = _blur_wrap(tile, 1.6, 0.01)
        tile /= tile.std() + 1e-6
    grain = _tiled(tile, H, W, rng)
    grain *= g_amp
    grain += 1.0
    bg_fac *= grain
    img = bg.astype(np.float32)
    img *= bg_fac[..., None]

    # the package: cardboard texture, damage shading and light inside the roi, composited through the mask
    x0, y0, x1, y1 = roi
    rh, rw = y1 - y0, x1 - x0
    card = _lowres_noise(rng, (rh, rw), 6) * rng.uniform(0.02, 0.06)
    card += 1.0
    ctile = _blur_wrap(rng.standard_normal((64, 64)).astype(np.float32), 0.7, 0.7)
    ctile /= ctile.std() + 1e-6
    card += _tiled(ctile, rh, rw, rng) * rng.uniform(0.015, 0.04)
    card *= _damage_maps(rng, cam, box, vis, projs, roi, s, meta, plan)
    card *= light_map[y0:y1, x0:x1]
    boxf = layer[y0:y1, x0:x1].astype(np.float32)
    boxf *= card[..., None]
    np.copyto(img[y0:y1, x0:x1], boxf, where=mask[y0:y1, x0:x1, None].astype(bool))

    # sensor noise (luminance), colour temperature (a per-channel lookup table), mild blur
    ntile = rng.standard_normal((96, 96)).astype(np.float32) * rng.uniform(1.0, 4.0)
    img += _tiled(ntile, H, W, rng)[..., None]
    np.clip(img, 0, 255, out=img)
    out: np.ndarray = img.astype(np.uint8)
    temp = rng.uniform(-1, 1)
    gains = np.array([1 + 0.08 * temp, 1 + rng.uniform(-0.03, 0.03), 1 - 0.1 * temp])
    lut = np.clip(np.arange(256)[:, None] * gains[None, :] + 0.5, 0, 255).astype(np.uint8).reshape(256, 1, 3)
    out = cv2.LUT(out, lut)
    if rng.random() < 0.8:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, 1.0) * s)
    if rng.random() < 0.25:  # a little motion along the belt
        k = int(rng.integers(3, 7))
        out = cv2.filter2D(out, -1, np.full((1, k), 1.0 / k, np.float32))
    meta["mask_area"] = int(cv2.countNonZero(mask))
    return out, mask, meta
