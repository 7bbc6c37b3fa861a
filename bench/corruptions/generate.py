"""The 19 CIFAR-10-C corruptions, written for bench from the public generator's description and its CIFAR-10
parameters (bench.corruptions.spec). One function per corruption: a 32 x 32 x 3 uint8 image, the severity's
parameters and a numpy RandomState in, a uint8 image out.

As in the generator: the corruptions work on floats in [0, 1] and the result is scaled by 255 and cast with
numpy's uint8 conversion, which truncates (it does not round); pixelate and JPEG work on PIL images. Unlike the
generator, every random draw comes from the RandomState it is given (bench seeds one per corruption, severity and
image), so the same image is made on every run. Library notes: scikit-image's `channel_axis=-1` is the
generator's `multichannel=True`; motion blur (and the flakes of snow) is ImageMagick's motion blur through Wand,
the generator's own call."""
from __future__ import annotations

import io

import numpy as np

SIZE = 32


def _to_uint8(x: np.ndarray) -> np.ndarray:
    # the generator's np.uint8(...) of a float array: truncation toward zero, values already within [0, 255]
    return np.asarray(x).astype(np.float64).astype(np.uint8)


def _unit(img: np.ndarray, dtype=np.float64) -> np.ndarray:
    return np.asarray(img, dtype=dtype) / 255.0


def _gaussian(x, sigma, **kw):
    from skimage.filters import gaussian

    return gaussian(x, sigma=sigma, **kw)


# --------------------------------------------------------------------------------------------------- noise
def gaussian_noise(img, c, rs, res=None):
    x = _unit(img)
    return np.clip(x + rs.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(img, c, rs, res=None):
    x = _unit(img)
    return np.clip(rs.poisson(x * c) / c, 0, 1) * 255


def impulse_noise(img, c, rs, res=None):
    from skimage.util import random_noise

    # scikit-image draws from a numpy Generator: one seeded from this image's RandomState
    rng = np.random.default_rng(rs.randint(0, 2**31 - 1))
    return np.clip(random_noise(_unit(img), mode="s&p", amount=c, rng=rng), 0, 1) * 255


def speckle_noise(img, c, rs, res=None):
    x = _unit(img)
    return np.clip(x + x * rs.normal(size=x.shape, scale=c), 0, 1) * 255


# --------------------------------------------------------------------------------------------------- blur
def gaussian_blur(img, c, rs, res=None):
    return np.clip(_gaussian(_unit(img), c, channel_axis=-1), 0, 1) * 255


def glass_blur(img, c, rs, res=None):
    sigma, delta, iterations = c
    x = _to_uint8(_gaussian(_unit(img), sigma, channel_axis=-1) * 255)
    # local pixel shuffling, sequential: every pixel from (SIZE - delta) down to delta + 1, in both axes, meets a
    # neighbour offset by randint(-delta, delta) (numpy's high is exclusive: {-1, 0} for delta 1). The generator
    # meant a swap, but its tuple assignment of two numpy views copies: the pixel takes the neighbour's value and
    # the neighbour keeps its own. That is what the released images hold, so it is what is done here.
    span = range(SIZE - delta, delta, -1)
    for _ in range(iterations):
        offsets = rs.randint(-delta, delta, size=(len(span), len(span), 2))
        for i, h in enumerate(span):
            for j, w in enumerate(span):
                dx, dy = offsets[i, j]
                x[h, w] = x[h + dy, w + dx]
    return np.clip(_gaussian(_unit(x), sigma, channel_axis=-1), 0, 1) * 255


def _disk(radius: float, alias_sigma: float) -> np.ndarray:
    """A normalised disk on the 17 x 17 grid -8..8, softened by a 3 x 3 Gaussian (the generator's anti-aliasing)."""
    import cv2

    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    disk = np.array(xx ** 2 + yy ** 2 <= radius ** 2, dtype=np.float32)
    disk /= disk.sum()
    return cv2.GaussianBlur(disk, ksize=(3, 3), sigmaX=alias_sigma)


def defocus_blur(img, c, rs, res=None):
    import cv2

    x = _unit(img)
    kernel = _disk(*c)
    out = np.stack([cv2.filter2D(x[:, :, ch], -1, kernel) for ch in range(3)], axis=-1)
    return np.clip(out, 0, 1) * 255


def _magick_motion_blur(png: bytes, radius, sigma, angle) -> np.ndarray:
    """ImageMagick's motion blur of a PNG, decoded as OpenCV reads it (BGR, or one channel for a grey image)."""
    import cv2
    from wand.image import Image as WandImage

    with WandImage(blob=png) as im:
        im.motion_blur(radius=radius, sigma=sigma, angle=angle)
        blob = im.make_blob()
    return cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_UNCHANGED)


def _png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 array: RGB for H x W x 3, greyscale (PIL mode L) for H x W."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def motion_blur(img, c, rs, res=None):
    radius, sigma = c
    x = _magick_motion_blur(_png(np.asarray(img, dtype=np.uint8)), radius, sigma, rs.uniform(-45, 45))
    if x.ndim == 3:
        x = x[..., [2, 1, 0]]  # BGR -> RGB
    else:  # ImageMagick wrote a grey PNG for a grey image: the same value in each channel
        x = np.repeat(x[..., None], 3, axis=2)
    return np.clip(x, 0, 255)


def _clipped_zoom(img: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre: crop ceil(SIZE / factor) pixels, zoom them back (linear), trim to SIZE."""
    from scipy.ndimage import zoom

    h = img.shape[0]
    crop = int(np.ceil(h / factor))
    top = (h - crop) // 2
    out = zoom(img[top:top + crop, top:top + crop], (factor, factor, 1), order=1)
    trim = (out.shape[0] - h) // 2
    return out[trim:trim + h, trim:trim + h]


def zoom_factors(top: float) -> np.ndarray:
    return np.arange(1, top, 0.01)  # float rounding: 7 / 12 / 16 / 21 / 26 factors (the generator's)


def zoom_blur(img, c, rs, res=None):
    x = _unit(img, np.float32)
    factors = zoom_factors(c)
    acc = np.zeros_like(x)
    for f in factors:
        acc += _clipped_zoom(x, f)
    return np.clip((x + acc) / (len(factors) + 1), 0, 1) * 255


# --------------------------------------------------------------------------------------------------- weather
def snow(img, c, rs, res=None):
    import cv2

    loc, scale, zoom_by, thresh, radius, sigma, blend = c
    x = _unit(img, np.float32)
    flakes = rs.normal(size=x.shape[:2], loc=loc, scale=scale)
    flakes = _clipped_zoom(flakes[..., None], zoom_by)
    flakes[flakes < thresh] = 0
    grey = (np.clip(flakes.squeeze(), 0, 1) * 255).astype(np.uint8)
    flakes = _magick_motion_blur(_png(grey), radius, sigma, rs.uniform(-135, -45)) / 255.0
    flakes = flakes[..., None]
    brightened = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).reshape(SIZE, SIZE, 1) * 1.5 + 0.5
    x = blend * x + (1 - blend) * np.maximum(x, brightened)
    return np.clip(x + flakes + np.rot90(flakes, k=2), 0, 1) * 255


def frost(img, c, rs, res=None):
    """res: the five frost images as read by OpenCV (BGR), already shrunk to a fifth (bench.corruptions.frost_images)."""
    weight_img, weight_frost = c
    layer = res[rs.randint(5)]
    top, left = rs.randint(0, layer.shape[0] - SIZE), rs.randint(0, layer.shape[1] - SIZE)
    patch = layer[top:top + SIZE, left:left + SIZE][..., [2, 1, 0]]
    return np.clip(weight_img * np.asarray(img, dtype=np.float64) + weight_frost * patch, 0, 255)


def plasma(rs, size: int = SIZE, decay: float = 3.0) -> np.ndarray:
    """A diamond-square height map in [0, 1] of a power-of-two `size`: square steps set each cell's centre from its
    four corners, diamond steps each edge midpoint from its two corners and the two centres beside it (wrapping
    around), each the mean plus uniform noise of amplitude `wibble`, which shrinks by `decay` per level."""
    grid = np.empty((size, size))
    grid[0, 0] = 0.0
    step, wibble = size, 100.0

    def noisy_mean(total):
        return total / 4 + wibble * rs.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = grid[0:size:step, 0:size:step]
        around = corners + np.roll(corners, -1, axis=0)
        around = around + np.roll(around, -1, axis=1)
        grid[half:size:step, half:size:step] = noisy_mean(around)
        centres = grid[half:size:step, half:size:step]
        corners = grid[0:size:step, 0:size:step]
        grid[0:size:step, half:size:step] = noisy_mean(centres + np.roll(centres, 1, axis=0)
                                                       + corners + np.roll(corners, -1, axis=1))
        grid[half:size:step, 0:size:step] = noisy_mean(centres + np.roll(centres, 1, axis=1)
                                                       + corners + np.roll(corners, -1, axis=0))
        step //= 2
        wibble /= decay
    grid -= grid.min()
    return grid / grid.max()


def fog(img, c, rs, res=None):
    strength, decay = c
    x = _unit(img)
    top = x.max()
    x = x + strength * plasma(rs, SIZE, decay)[:SIZE, :SIZE][..., None]
    return np.clip(x * top / (top + strength), 0, 1) * 255


# --------------------------------------------------------------------------------------------------- digital
def _hsv_shift(img, channel: int, fn):
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(_unit(img))
    hsv[:, :, channel] = np.clip(fn(hsv[:, :, channel]), 0, 1)
    return np.clip(hsv2rgb(hsv), 0, 1) * 255


def brightness(img, c, rs, res=None):
    return _hsv_shift(img, 2, lambda v: v + c)


def saturate(img, c, rs, res=None):
    return _hsv_shift(img, 1, lambda s: s * c[0] + c[1])


def contrast(img, c, rs, res=None):
    x = _unit(img)
    mean = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - mean) * c + mean, 0, 1) * 255


def elastic_transform(img, c, rs, res=None):
    import cv2
    from scipy.ndimage import map_coordinates

    alpha, sigma, affine = (SIZE * v for v in c)
    x = _unit(img, np.float32)
    # a random affine map of three points around the centre (each moved by up to `affine` pixels) ...
    centre = np.float32((SIZE, SIZE)) // 2
    third = SIZE // 3
    src = np.float32([centre + third, [centre[0] + third, centre[1] - third], centre - third])
    dst = src + rs.uniform(-affine, affine, size=src.shape).astype(np.float32)
    x = cv2.warpAffine(x, cv2.getAffineTransform(src, dst), (SIZE, SIZE), borderMode=cv2.BORDER_REFLECT_101)
    # ... then a smooth random displacement field of strength alpha and smoothness sigma
    dx = (_gaussian(rs.uniform(-1, 1, size=(SIZE, SIZE)), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (_gaussian(rs.uniform(-1, 1, size=(SIZE, SIZE)), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    cols, rows, chans = np.meshgrid(np.arange(SIZE), np.arange(SIZE), np.arange(3))
    coords = (np.reshape(rows + dy[..., None], (-1, 1)), np.reshape(cols + dx[..., None], (-1, 1)),
              np.reshape(chans, (-1, 1)))
    return np.clip(map_coordinates(x, coords, order=1, mode="reflect").reshape(x.shape), 0, 1) * 255


def _pil(img):
    from PIL import Image

    return Image.fromarray(np.asarray(img, dtype=np.uint8))


def pixelate(img, c, rs, res=None):
    from PIL import Image

    small = int(SIZE * c)
    return np.asarray(_pil(img).resize((small, small), Image.BOX).resize((SIZE, SIZE), Image.BOX))


def jpeg_compression(img, c, rs, res=None):
    from PIL import Image

    buf = io.BytesIO()
    _pil(img).save(buf, "JPEG", quality=c)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


WATER = np.array([175, 238, 238]) / 255.0  # pale turquoise, in the image's channel order
MUD = np.array([63, 42, 20]) / 255.0


def spatter(img, c, rs, res=None):
    import cv2

    loc, scale, sigma, thresh, intensity, mud = c
    x = _unit(img, np.float32)
    liquid = _gaussian(rs.normal(size=x.shape[:2], loc=loc, scale=scale), sigma)
    liquid[liquid < thresh] = 0
    if not mud:
        # water drops: edges of the liquid mask, their distance map equalised and embossed, as a bright tint
        liquid = (liquid * 255).astype(np.uint8)
        dist = cv2.distanceTransform(255 - cv2.Canny(liquid, 50, 150), cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
        dist = cv2.blur(cv2.filter2D(dist, cv2.CV_8U, emboss), (3, 3)).astype(np.float32)
        mask = liquid * dist
        peak = mask.max()
        # the generator divides by the peak even when no drop fell (NaN); an empty mask tints nothing here
        mask = mask / peak * intensity if peak > 0 else np.zeros_like(mask)
        return np.clip(x + mask[..., None] * WATER, 0, 1) * 255
    # mud: the liquid mask blurred, its dense part replacing the image by brown
    mask = _gaussian(np.where(liquid > thresh, 1, 0).astype(np.float32), intensity)
    mask[mask < 0.8] = 0
    return np.clip(x * (1 - mask[..., None]) + MUD * mask[..., None], 0, 1) * 255


FUNCTIONS = {f.__name__: f for f in (
    gaussian_noise, shot_noise, impulse_noise, speckle_noise, gaussian_blur, glass_blur, defocus_blur, motion_blur,
    zoom_blur, snow, frost, fog, brightness, contrast, elastic_transform, pixelate, jpeg_compression, spatter,
    saturate)}


def corrupt_image(name: str, img: np.ndarray, c, rs: np.random.RandomState, res=None) -> np.ndarray:
    """One image corrupted, as uint8 (the generator's truncating cast)."""
    return _to_uint8(FUNCTIONS[name](img, c, rs, res))
