"""All file I/O for r2d: particle stacks in, image stacks and matrix files out.

Reading: :func:`open_stack` opens a particle stack lazily (MRC/MRCS/.st, EMAN2 HDF,
RELION STAR, cryoSPARC CS); :meth:`Stack.read` returns float32 ``(k, box, box)`` copies.
Writing: :func:`write_image_stack` (EMAN2-layout HDF5 with per-image header attributes),
:func:`write_mrcs` (MRC mode 2 stack) and :func:`write_matrix` (HDF5, one dataset per name), all
through :func:`atomic_write`. Every problem with an input file raises :class:`InputError` whose
message names the file, says what is wrong and what to do.

One job per module; every name is re-exported here, so callers write ``r2d.io.X``:

* :mod:`r2d.io.atomic`: :func:`atomic_write` (temporary file, fsync, rename);
* :mod:`r2d.io.files`: ``_check_file``, the exists/regular/readable check of every reader;
* :mod:`r2d.io.images`: MRC and EMAN2 HDF image files, :class:`Stack`, :func:`image_problems`;
* :mod:`r2d.io.star`: RELION STAR (:func:`read_star_metadata`);
* :mod:`r2d.io.cryosparc`: cryoSPARC ``.cs`` (:func:`read_cs_metadata`);
* :mod:`r2d.io.index`: the r2d particle index (:func:`write_particle_index`);
* :mod:`r2d.io.stacks`: :func:`open_stack`, which picks the reader by extension;
* :mod:`r2d.io.hdf`: EMAN2 HDF stacks (:func:`write_image_stack`, :func:`read_image_headers`,
  :func:`read_image_stack`, :func:`user_header`);
* :mod:`r2d.io.mrcs`: MRC stack writers (:func:`write_mrcs`, :func:`new_mrcs`, :func:`stream_mrcs`);
* :mod:`r2d.io.matrix`: matrix files (:func:`write_matrix`, :func:`read_matrix`,
  :func:`read_matrix_attrs`);
* :mod:`r2d.io.blocks`: :func:`image_block`, :func:`chunk_index`, :func:`chunk_range`;
* :mod:`r2d.io.maps`: :func:`read_map` (3-D MRC maps);
* :mod:`r2d.io.particles`: particles for a step with the data checks (:func:`read_particles`,
  :func:`read_good_particles`, :class:`ParticleRows`, :func:`bad_mask`), :func:`read_exclude`,
  :func:`stack_weight`.

Dependencies inside the package, without cycles (no module uses a name defined in this file):
images, star, cryosparc, hdf, matrix → files; hdf, mrcs, matrix → atomic; star, cryosparc,
index, particles, hdf, mrcs, stacks → images; index, hdf → matrix; stacks → star, cryosparc, index;
hdf → stacks. Nothing here imports the CLI layer.
"""

from __future__ import annotations

from r2d.io.atomic import _HOST, atomic_write
from r2d.io.blocks import chunk_index, chunk_range, image_block
from r2d.io.cryosparc import read_cs_metadata
from r2d.io.hdf import read_image_headers, read_image_stack, user_header, write_image_stack
from r2d.io.images import (
    HDF_EXTENSIONS,
    IMAGE_CONSTANT,
    IMAGE_NONFINITE,
    IMAGE_OK,
    IMAGE_PROBLEMS,
    MRC_EXTENSIONS,
    Stack,
    image_problems,
)
from r2d.io.index import INDEX_MARK, write_particle_index
from r2d.io.maps import read_map
from r2d.io.matrix import read_matrix, read_matrix_attrs, write_matrix
from r2d.io.mrcs import new_mrcs, stream_mrcs, write_mrcs
from r2d.io.particles import (
    ParticleRows,
    bad_mask,
    read_exclude,
    read_good_particles,
    read_particles,
    stack_weight,
)
from r2d.io.stacks import open_stack
from r2d.io.star import read_star_metadata

__all__ = [
    "HDF_EXTENSIONS", "IMAGE_CONSTANT", "IMAGE_NONFINITE", "IMAGE_OK", "IMAGE_PROBLEMS", "INDEX_MARK",
    "MRC_EXTENSIONS", "ParticleRows", "Stack", "atomic_write", "bad_mask", "chunk_index", "chunk_range",
    "image_block", "image_problems", "new_mrcs", "open_stack", "stream_mrcs", "read_cs_metadata", "read_exclude",
    "read_good_particles", "read_image_headers", "read_image_stack", "read_map", "read_matrix",
    "read_matrix_attrs", "read_particles", "read_star_metadata", "stack_weight", "user_header",
    "write_image_stack", "write_matrix", "write_mrcs", "write_particle_index",
]
# private names tests use: _HOST (tests/test_io.py, the temporary-file names of atomic_write)
