"""A deterministic procedural road, seen through a Donkey-sized camera (160x120 RGB), in NumPy.

The demo needs frames and a pilot that exist on a fresh machine, so this draws something that
looks like the Donkey simulator's generated road: grey asphalt, white edge lines, a dashed yellow
centre line, grass, hills on the horizon and a sky gradient. The road's curvature along its length
is a smooth sum of seeded sinusoids; a frame is a pure function of (seed, position along the road,
lateral offset, heading error).

Conventions (all lengths in metres, angles in radians): ``position`` is the arc length along the
centre line; ``offset`` is the car's distance to the right of the centre line; ``heading`` is the
car's heading relative to the road, positive turning right; curvature positive bends right; the
steering label is Donkey's ``angle`` in [-1, 1], positive steers right.

Rendering is per image row: each row below the horizon sees the ground at one forward distance,
where the centre line's lateral position, direction and arc length are interpolated from a
polyline of the road ahead. Anti-aliased edges come from the pixel's ground footprint.
"""
import collections
import math

import numpy as np

WIDTH, HEIGHT = 160, 120

# Camera: pinhole, level, horizon a third of the way down like the Donkey sim's view.
FOCAL_PX = 78.0            # ~90 degree horizontal field of view at 160 px
HORIZON_ROW = 38.0
CAMERA_HEIGHT = 0.9        # metres above the road
VIEW_DISTANCE = 40.0       # road drawn this far ahead, then haze

# Road.
HALF_WIDTH = 1.1           # centre to the outer edge of the white line
EDGE_LINE = 0.12
CENTRE_LINE = 0.10
DASH_PERIOD, DASH_LENGTH = 3.0, 1.8
MAX_CURVATURE = 0.12       # 1 / (tightest radius, ~8 m)

# Steering label: pure pursuit to a point on the centre line ahead.
LOOKAHEAD = 4.0
WHEELBASE = 1.2           # the scene is car-sized: a 2.2 m road seen from 0.9 m up
MAX_STEER = math.radians(20.0)

SKY_TOP = np.array([70, 105, 170], np.float32)
SKY_HORIZON = np.array([175, 195, 215], np.float32)
HAZE = np.array([170, 182, 190], np.float32)
HILLS = np.array([95, 135, 80], np.float32)
GRASS = np.array([88, 128, 60], np.float32)
ASPHALT = np.array([112, 112, 116], np.float32)
WHITE = np.array([235, 235, 235], np.float32)
YELLOW = np.array([225, 185, 40], np.float32)

_AHEAD_STEP = 0.25
_AHEAD = np.arange(0.0, VIEW_DISTANCE + 2 * _AHEAD_STEP, _AHEAD_STEP)  # arc lengths ahead of the car

Sample = collections.namedtuple("Sample", "frame angle throttle position offset heading")


class Track(object):
    """One seeded road: its curvature profile, textures and camera."""

    def __init__(self, seed=0, width=WIDTH, height=HEIGHT):
        rng = np.random.RandomState(seed)
        self.seed = seed
        self.width, self.height = width, height
        # Curvature: a few smooth waves of different lengths; the shaping keeps some straights.
        self._periods = rng.uniform([35.0, 60.0, 110.0], [50.0, 90.0, 160.0])
        self._phases = rng.uniform(0, 2 * np.pi, 3)
        self._weights = rng.uniform([0.5, 0.35, 0.2], [0.8, 0.6, 0.4])
        # Textures in ground coordinates (they move with the car), and a small bank of sensor noise.
        self._ground_texture = _smooth_noise(rng, 64, 64, 2)
        self._sensor_noise = rng.normal(0, 3.0, (4, height, width, 1)).astype(np.float32)
        self._hills = _hill_profile(rng)
        self._yaw_table = [0.0]  # road direction at each whole metre
        scale = width / float(WIDTH)
        self.focal = FOCAL_PX * scale
        self.horizon = HORIZON_ROW * height / float(HEIGHT)
        self.cx = (width - 1) / 2.0
        rows = np.arange(height, dtype=np.float32) + 0.5
        ground = rows > self.horizon + 0.5
        self._ground_rows = np.nonzero(ground)[0]
        # Forward distance seen by each ground row, capped at the view distance.
        self._row_distance = np.minimum(
            CAMERA_HEIGHT * self.focal / (rows[ground] - self.horizon), VIEW_DISTANCE).astype(np.float32)
        self._col_offset = (np.arange(width, dtype=np.float32) - self.cx) / self.focal  # lateral per metre ahead
        fog = (0.8 * (1.0 - np.exp(-self._row_distance / 28.0)))[:, None, None]
        self._clear, self._haze = (1.0 - fog).astype(np.float32), (HAZE * fog).astype(np.float32)
        self._sky = self._draw_sky()

    # --- geometry -----------------------------------------------------------------------------
    def curvature(self, position):
        """Curvature (1/m, positive bends right) at arc length(s) ``position``."""
        s = np.asarray(position, dtype=np.float64)[..., None]
        waves = np.sum(self._weights * np.sin(2 * np.pi * s / self._periods + self._phases), axis=-1)
        return MAX_CURVATURE * np.tanh(1.6 * waves) / np.tanh(1.6 * self._weights.sum())

    def road_ahead(self, position, offset=0.0, heading=0.0):
        """The centre line ahead in the car's frame: (forward, right, direction, arc length) arrays."""
        kappa = self.curvature(position + _AHEAD)
        theta = np.concatenate([[0.0], np.cumsum(0.5 * (kappa[1:] + kappa[:-1]) * _AHEAD_STEP)])
        x = np.concatenate([[0.0], np.cumsum(np.cos(0.5 * (theta[1:] + theta[:-1])) * _AHEAD_STEP)])
        y = np.concatenate([[0.0], np.cumsum(np.sin(0.5 * (theta[1:] + theta[:-1])) * _AHEAD_STEP)])
        cos_h, sin_h = math.cos(heading), math.sin(heading)
        forward = x * cos_h + (y - offset) * sin_h
        right = -x * sin_h + (y - offset) * cos_h
        return forward, right, theta - heading, _AHEAD

    def steering(self, position, offset=0.0, heading=0.0):
        """The steering that follows the road from here: pure pursuit to the centre line
        ``LOOKAHEAD`` metres ahead, as Donkey's angle in [-1, 1]."""
        forward, right, _, _ = self.road_ahead(position, offset, heading)
        distance = np.hypot(forward, right)
        i = min(int(np.searchsorted(distance, LOOKAHEAD)), len(distance) - 1)
        f, r = forward[i], right[i]
        delta = math.atan2(2.0 * WHEELBASE * r, f * f + r * r)
        return float(np.clip(delta / MAX_STEER, -1.0, 1.0))

    def throttle(self, position):
        """Slower where the road bends: 0.5 on straights, 0.35 in the tightest curve ahead."""
        bend = float(np.max(np.abs(self.curvature(position + np.array([0.0, 2.0, 4.0]))))) / MAX_CURVATURE
        return round(0.5 - 0.15 * bend, 4)

    # --- pictures -----------------------------------------------------------------------------
    def render(self, position, offset=0.0, heading=0.0):
        """uint8 RGB (height, width, 3) camera view."""
        image = self._sky.copy()
        self._draw_hills(image, position, heading)
        self._draw_ground(image, position, offset, heading)
        image += self._sensor_noise[int(position * 7.0) % len(self._sensor_noise)]
        return np.clip(image, 0, 255).astype(np.uint8)

    def _draw_sky(self):
        rows = np.arange(self.height, dtype=np.float32)[:, None, None]
        t = np.clip(rows / max(self.horizon, 1.0), 0.0, 1.0)
        sky = SKY_TOP * (1 - t) + SKY_HORIZON * t
        return np.repeat(sky, self.width, axis=1).astype(np.float32)

    def _world_yaw(self, position, heading):
        """The car's direction relative to the road's start: the integral of curvature, plus heading.
        Whole metres come from a table that only ever grows on the same grid, so the value does not
        depend on which positions were asked for before (frames stay reproducible) and a long
        drive does not re-integrate from zero every frame."""
        whole = int(math.floor(position))
        if whole < 0:
            return _integral(self.curvature, 0.0, position) + heading
        while len(self._yaw_table) <= whole:
            start = len(self._yaw_table) - 1
            ends = start + np.arange(1, 257, dtype=np.float64)
            steps = [_integral(self.curvature, e - 1.0, e) for e in ends]
            self._yaw_table.extend((self._yaw_table[-1] + np.cumsum(steps)).tolist())
        return self._yaw_table[whole] + _integral(self.curvature, float(whole), position) + heading

    def _draw_hills(self, image, position, heading):
        yaw = self._world_yaw(position, heading)
        bearings = yaw + np.arctan(self._col_offset)
        heights = np.interp(np.mod(bearings, 2 * np.pi), self._hills[0], self._hills[1]) * self.height / HEIGHT
        top = int(self.horizon) + 1  # the ground is drawn over everything below
        rows = np.arange(top, dtype=np.float32)[:, None]
        cover = np.clip(rows - (self.horizon - heights[None, :]) + 0.5, 0.0, 1.0)[..., None]
        shade = 0.85 + 0.15 * np.clip((self.horizon - rows) / 12.0, 0, 1)[..., None]
        image[:top] = image[:top] * (1 - cover) + HILLS * shade * cover

    def _draw_ground(self, image, position, offset, heading):
        forward, right, direction, arc = self.road_ahead(position, offset, heading)
        forward = np.maximum.accumulate(forward)  # beyond a hairpin the road is hidden anyway
        distance = self._row_distance
        centre = np.interp(distance, forward, right).astype(np.float32)[:, None]
        cos_slope = np.cos(np.interp(distance, forward, direction)).astype(np.float32)[:, None]
        along = (np.interp(distance, forward, arc) + position).astype(np.float32)[:, None]
        from_centre = self._col_offset[None, :] * distance[:, None] - centre
        # Distance to the centre line measured across the road (not along the image row), in
        # pixels of ground footprint there, so edges are anti-aliased at every distance.
        pixels_per_metre = self.focal / (distance[:, None] * cos_slope)
        across_px = np.abs(from_centre) * (cos_slope * pixels_per_metre)

        def coverage(half_width):  # fraction of the pixel inside the band |across| < half_width
            return np.clip(half_width * pixels_per_metre - across_px + 0.5, 0.0, 1.0)[..., None]

        road = coverage(HALF_WIDTH)
        inside = coverage(HALF_WIDTH - EDGE_LINE)
        dashes = np.mod(along, DASH_PERIOD) < DASH_LENGTH
        centre_line = coverage(CENTRE_LINE / 2) * dashes[..., None]

        tex = self._texture(along, from_centre)
        grass = GRASS * (0.8 + 0.4 * tex)
        asphalt = ASPHALT * (0.92 + 0.16 * tex)
        ground = grass + road * (WHITE - grass) + inside * (asphalt - WHITE)
        ground += centre_line * (YELLOW - ground)
        # Haze towards the horizon, so the far road fades like the sim's.
        image[self._ground_rows] = ground * self._clear + self._haze

    def _texture(self, along, across):
        size = self._ground_texture.shape[0]
        i = (np.floor(along * 4.0).astype(np.int64)) % size
        j = (np.floor(across * 4.0).astype(np.int64)) % size
        return self._ground_texture[i, j][..., None]


def _integral(function, start, end, pieces=8):
    """Simpson's rule: plenty for a curvature that changes over tens of metres."""
    if end == start:
        return 0.0
    x = np.linspace(start, end, 2 * pieces + 1)
    y = function(x)
    return float((end - start) / (6.0 * pieces) * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum()))


def _smooth_noise(rng, rows, cols, passes):
    """Tileable noise in [0, 1], box-blurred so it reads as texture, not static."""
    noise = rng.uniform(0, 1, (rows, cols)).astype(np.float32)
    for _ in range(passes):
        noise = (noise + np.roll(noise, 1, 0) + np.roll(noise, -1, 0) + np.roll(noise, 1, 1)
                 + np.roll(noise, -1, 1)) / 5.0
    low, high = noise.min(), noise.max()
    return (noise - low) / max(high - low, 1e-6)


def _hill_profile(rng):
    """Hill heights (pixels above the horizon at 120 rows) around the full circle of bearings."""
    bearings = np.linspace(0, 2 * np.pi, 721)
    heights = np.full_like(bearings, 2.0)
    for _ in range(9):
        centre, width, height = rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.5), rng.uniform(4, 13)
        gap = np.angle(np.exp(1j * (bearings - centre)))
        heights = np.maximum(heights, height * np.clip(1 - np.abs(gap) / width, 0, 1) ** 1.3)
    return bearings, heights


_TRACKS = {}


def track_for(seed):
    """The Track for a seed (built once: the textures cost a few milliseconds)."""
    if seed not in _TRACKS:
        _TRACKS[seed] = Track(seed)
    return _TRACKS[seed]


def render_frame(position, track=0, offset=0.0, heading=0.0):
    """uint8 RGB (120, 160, 3) view from ``position`` metres along a track (a Track or a seed)."""
    track = track if isinstance(track, Track) else track_for(track)
    return track.render(position, offset, heading)


def track_frames(n, seed=0, step=0.35, start=0.0, offset_spread=0.0, heading_spread=0.0, noise_seed=None):
    """``n`` Samples along a track: (frame uint8 RGB, angle label, throttle label, position,
    offset, heading). With spreads, each frame is taken from a car displaced sideways and turned
    (uniform in +-spread) and the angle label is the correction back to the road - what a pilot
    needs to learn to recover. Deterministic for a given seed and noise_seed."""
    track = track_for(seed)
    rng = np.random.RandomState(seed + 1 if noise_seed is None else noise_seed)
    for i in range(n):
        position = start + i * step
        offset = float(rng.uniform(-offset_spread, offset_spread)) if offset_spread else 0.0
        heading = float(rng.uniform(-heading_spread, heading_spread)) if heading_spread else 0.0
        frame = track.render(position, offset, heading)
        yield Sample(frame, track.steering(position, offset, heading), track.throttle(position),
                     position, offset, heading)


class TrackCar(object):
    """A kinematic bicycle on the track (Frenet frame): steering and throttle in, pose out.
    Keeps the car near the road: if it leaves, it is put back on the centre line."""

    def __init__(self, track=0, top_speed=8.0, position=0.0):
        self.track = track if isinstance(track, Track) else track_for(track)
        self.top_speed = top_speed
        self.position, self.offset, self.heading = position, 0.0, 0.0
        self.resets = 0

    def step(self, angle, throttle, dt):
        angle = float(np.clip(angle or 0.0, -1.0, 1.0))
        speed = self.top_speed * float(np.clip(throttle or 0.0, 0.0, 1.0))
        kappa = float(self.track.curvature(self.position))
        along = speed * math.cos(self.heading) / max(1.0 - kappa * self.offset, 0.2) * dt
        self.offset += speed * math.sin(self.heading) * dt
        self.heading += speed * math.tan(angle * MAX_STEER) / WHEELBASE * dt - kappa * along
        self.position += along
        if abs(self.offset) > HALF_WIDTH * 1.6 or abs(self.heading) > 1.2:
            self.offset, self.heading = 0.0, 0.0
            self.resets += 1

    def frame(self):
        return self.track.render(self.position, self.offset, self.heading)

    def label(self):
        return self.track.steering(self.position, self.offset, self.heading), self.track.throttle(self.position)
