"""The run's working resolution: the particles Fourier-cropped so that Nyquist is ``maxres``
(docs/algorithm.md §1.7).

2-D classification uses no detail finer than about 8 Å, so every per-particle step runs on a
**working stack**: each particle Fourier-cropped (:func:`r2d.transforms.fourier_crop`) to the
even box ``m ≈ n · apix / (maxres / 2)``, pixel size ``apix · n / m`` (the same field of view).
It is never up-sampled: a stack already that coarse is used as it is. Shifts measured on the
working stack are in working pixels; ``Working.scale`` (input px per working px, ``n / m``)
converts them, and the rotation centre (pixel ``n // 2`` ↔ ``m // 2``) is kept by the crop.
"""

from __future__ import annotations

from dataclasses import dataclass

from r2d.errors import ConfigError
from r2d.io import image_block
from r2d.transforms import fourier_crop

#: smallest working box (px) a ``maxres`` may leave
MIN_WORKING_BOX = 32


@dataclass(frozen=True)
class Working:
    """Geometry of the working stack.

    ``box``, ``apix``: the working box (px) and pixel size (Å/px, None when unknown);
    ``input_box``, ``input_apix``: those of the input; ``maxres`` (Å, None = full resolution);
    ``note``: one line saying what was chosen and why.
    """

    box: int
    apix: float | None
    input_box: int
    input_apix: float | None
    maxres: float | None
    note: str

    @property
    def cropped(self) -> bool:
        """True when the working stack is smaller than the input (a working stack is written)."""
        return self.box < self.input_box

    @property
    def scale(self) -> float:
        """Input pixels per working pixel (``input_box / box``; 1 without cropping)."""
        return self.input_box / self.box


def working_geometry(box: int, apix: float | None, maxres: float | None, *, strict: bool = True) -> Working:
    """The working box and pixel size for an input of ``box`` px at ``apix`` Å/px.

    ``maxres`` (Å) None or 0 keeps the full resolution; so does a ``maxres`` finer than the
    input's Nyquist (``2 · apix``) or an unknown pixel size (``note`` says which). Otherwise the
    box is ``2 · round(box · apix / maxres)`` (even) and the pixel size ``apix · box / m``.
    Raises :class:`ConfigError` when that box would be under :data:`MIN_WORKING_BOX` px; with
    ``strict=False`` (a ``maxres`` the user did not set) the box is then raised to that size.
    """
    full = dict(box=box, apix=apix, input_box=box, input_apix=apix, maxres=maxres or None)
    if not maxres:
        return Working(**full, note=f"maxres: null, working at the full {box} px")
    if apix is None:
        return Working(**full, note=f"maxres: {maxres:g} Å needs the pixel size, which the input does not "
                                    f"give (set apix); working at the full {box} px")
    m = int(2 * round(box * apix / maxres))
    if m < MIN_WORKING_BOX and not strict:
        m = min(box, MIN_WORKING_BOX)
    if m < MIN_WORKING_BOX:
        raise ConfigError(f"maxres: {maxres:g} Å would leave a working box of {m} px from {box} px at "
                          f"{apix:g} Å/px (at least {MIN_WORKING_BOX} px needed); use maxres ≤ "
                          f"{2 * box * apix / (MIN_WORKING_BOX + 1):.1f} Å, or null for the full resolution")
    if m >= box:
        return Working(**full, note=f"maxres: {maxres:g} Å is not coarser than the input's Nyquist "
                                    f"({2 * apix:g} Å at {apix:g} Å/px); working at the full {box} px")
    w_apix = apix * box / m
    return Working(m, w_apix, box, apix, maxres,
                   note=f"maxres: {maxres:g} Å: working stack of {m} px at {w_apix:.4g} Å/px "
                        f"(input {box} px at {apix:g} Å/px)")


def write_working_stack(stack, out, m: int, *, workers: int = 1) -> None:
    """Fourier-crop every particle of ``stack`` (an :class:`r2d.io.Stack`, read once, in blocks
    of 64 MiB, :func:`r2d.io.image_block`) to ``m`` px and append it to ``out`` (the writer of
    :func:`r2d.io.stream_mrcs`, plain file writes: memory stays one block however large the
    stack). NaN/Inf particles stay non-finite and constant ones constant, so the data checks of
    later steps find the same bad particles as on the input."""
    block = image_block(stack.box)
    for lo in range(0, stack.n, block):
        hi = min(stack.n, lo + block)
        out.write(fourier_crop(stack.read(slice(lo, hi)), m, workers=workers))
