"""Checks shared by the converters and the evaluation before they trust a medical image file.

* :func:`check_complete`: SimpleITK reads a truncated ``.nii.gz`` or ``.nii`` without complaint and
  fills the missing voxels with zeros, so a file is first decompressed in full (gzip notices a cut or
  corrupt stream) and its size compared with what the NIfTI header promises.
* :class:`Geometry` and :func:`onto_grid`: two files of one case must share their voxel grid
  (size, spacing, origin, direction). They are compared with the tolerances nnU-Net applies
  (``numpy.allclose``, as in ``verify_dataset_integrity``; see :meth:`Geometry.matches` for values
  near zero). A label that only stores the
  same grid in another axis order or direction (a pure reorientation) is moved onto the reference
  grid by permuting and flipping its array, which is nearest-neighbour resampling with every voxel
  centre hitting one exactly; anything else is refused, because stamping another grid's geometry
  onto it would mirror or shift it.

Both raise :class:`VolumeError`, whose message names the file; callers re-raise it as their own
error type.
"""
from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

_NIFTI_HEADER_SIZES = {348: "nifti1", 540: "nifti2"}
_MIN_DATA_OFFSET = {348: 352, 540: 544}  # header plus the 4-byte extension flag of a single-file NIfTI
_CHUNK = 1 << 20


class VolumeError(RuntimeError):
    """A file that cannot be trusted as it is; the message names the file and what to do."""


def _is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _read_payload(path: Path) -> tuple[bytes, int]:
    """The first bytes (enough for any NIfTI header) and the full size of the (decompressed) content."""
    if path.name.lower().endswith(".gz"):
        try:
            with gzip.open(path, "rb") as stream:
                head = stream.read(544)
                size = len(head)
                while chunk := stream.read(_CHUNK):
                    size += len(chunk)
        except (EOFError, OSError, zlib.error) as error:
            raise VolumeError(
                f"{path}: truncated or corrupt gzip data ({error}); download or copy the file again"
            ) from error
        return head, size
    with open(path, "rb") as stream:
        return stream.read(544), path.stat().st_size


def _promised_nifti_bytes(path: Path, head: bytes) -> int | None:
    """Header offset + voxel count x bytes per voxel, or None where the header is not a single-file NIfTI
    that nibabel understands (then the image reader has the last word)."""
    import nibabel

    if len(head) < 348:
        raise VolumeError(f"{path}: only {len(head)} bytes, too short for a NIfTI header; download or copy it again")
    sizeof_header = next(
        (size for order in "<>" for size in [struct.unpack(f"{order}i", head[:4])[0]] if size in _NIFTI_HEADER_SIZES),
        None,
    )
    if sizeof_header is None:
        return None
    header_class = nibabel.Nifti1Header if sizeof_header == 348 else nibabel.Nifti2Header
    try:
        header = header_class.from_fileobj(io.BytesIO(head), check=False)
        if header["magic"].item() not in (b"n+1", b"n+2"):
            return None  # a .hdr/.img pair keeps its voxels elsewhere
        shape = header.get_data_shape()
        itemsize = header.get_data_dtype().itemsize
        offset = max(int(header.get_data_offset()), _MIN_DATA_OFFSET[sizeof_header])
    except Exception:  # noqa: BLE001 - an exotic header is left to the image reader to judge
        return None
    return offset + math.prod(int(n) for n in shape) * itemsize


def check_complete(path: Path) -> None:
    """Raise :class:`VolumeError` if ``path`` does not decompress or holds fewer voxels than its header promises.

    Only gzip streams and NIfTI files are checked here: the other formats' readers (MetaImage, NRRD,
    PNG) already fail on a short file.
    """
    path = Path(path)
    if not (_is_nifti(path) or path.name.lower().endswith(".gz")):
        return
    head, size = _read_payload(path)
    if not _is_nifti(path):
        return
    promised = _promised_nifti_bytes(path, head)
    if promised is not None and size < promised:
        raise VolumeError(
            f"{path}: truncated: its header promises {promised} bytes of header and voxels, the file holds "
            f"{size}; download or copy the file again"
        )


def reader_error(path: Path, error: BaseException, what: str = "an image") -> VolumeError:
    """A one-line :class:`VolumeError` for an image reader's exception about ``path``."""
    # SimpleITK's message starts with the C++ source location; its last line says what went wrong.
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return VolumeError(
        f"{path}: cannot be read as {what} ({lines[-1] if lines else type(error).__name__}); the file is "
        f"truncated or not an image, write or download it again"
    )


def read_image(path: Path, what: str = "an image"):
    """``SimpleITK.ReadImage`` of a file that passed :func:`check_complete`; reader errors become one line."""
    import SimpleITK as sitk

    check_complete(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise reader_error(path, error, what) from None


def count_non_finite(path: Path, array) -> int:
    """How many voxels of ``path`` (read into ``array`` by :func:`read_image`) are NaN or infinite.

    SimpleITK's NIfTI reader turns NaN into 0, so a float NIfTI file's voxels are counted as stored (nibabel);
    the other formats reach ``array`` unchanged.
    """
    if array.dtype.kind not in "fc":
        return 0
    if _is_nifti(Path(path)):
        import nibabel

        array = np.asanyarray(nibabel.load(str(path)).dataobj)
    return int(array.size - np.count_nonzero(np.isfinite(array)))


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


def _format_numbers(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v + 0.0:.6g}" for v in values) + ")"  # + 0.0 turns -0.0 into 0


@dataclass(frozen=True)
class Geometry:
    """A voxel grid in SimpleITK's conventions: index order x, y, z; direction row-major, columns = axes."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image) -> "Geometry":
        """Of a ``SimpleITK.Image`` or of an ``ImageFileReader`` after ``ReadImageInformation()``."""
        return cls(
            tuple(int(n) for n in image.GetSize()),
            tuple(float(s) for s in image.GetSpacing()),
            tuple(float(o) for o in image.GetOrigin()),
            tuple(float(d) for d in image.GetDirection()),
        )

    @property
    def dimension(self) -> int:
        return len(self.size)

    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(self.dimension, self.dimension)

    def extent(self) -> float:
        """The longest side of the grid in physical units (mm)."""
        return max((n * abs(s) for n, s in zip(self.size, self.spacing)), default=0.0)

    def matches(self, other: "Geometry") -> bool:
        """Same grid within nnU-Net's tolerances: ``numpy.allclose`` (relative 1e-5) on spacing, origin and
        direction. Near zero, where a relative tolerance vanishes but float32 headers still round, an origin
        may be off by 1e-5 of the grid's extent (what a relative tolerance allows an origin that far out)
        and a direction cosine by 1e-6."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing)
            and np.allclose(self.origin, other.origin, atol=1e-5 * max(1.0, self.extent(), other.extent()))
            and np.allclose(self.direction, other.direction, atol=1e-6)
        )

    def describe(self) -> str:
        return (
            f"size {'x'.join(str(n) for n in self.size)}, spacing {_format_numbers(self.spacing)}, "
            f"origin {_format_numbers(self.origin)}, direction {_format_numbers(self.direction)}"
        )


def reorient_onto(array: np.ndarray, geometry: Geometry, target: Geometry) -> np.ndarray | None:
    """``array`` (numpy axis order) on ``geometry``, moved onto ``target``'s grid by permuting and flipping
    its axes; None if no such move lands every voxel centre on one of ``target`` (within nnU-Net's tolerances)."""
    dimension = geometry.dimension
    if target.dimension != dimension or array.ndim != dimension:
        return None
    source_direction = geometry.direction_matrix()
    try:
        # Column j: target axis j expressed in the source's axes; a pure reorientation makes it +-1 on one axis.
        relation = np.linalg.solve(source_direction, target.direction_matrix())
    except np.linalg.LinAlgError:
        return None
    source_axis = [int(np.argmax(np.abs(relation[:, j]))) for j in range(dimension)]
    if sorted(source_axis) != list(range(dimension)):
        return None
    signs = [1 if relation[source_axis[j], j] > 0 else -1 for j in range(dimension)]

    # numpy axis (dimension-1-a) holds SimpleITK axis a.
    moved = np.transpose(array, [dimension - 1 - source_axis[dimension - 1 - axis] for axis in range(dimension)])
    origin = np.asarray(geometry.origin, dtype=float)
    for j, k in enumerate(source_axis):
        if signs[j] < 0:
            moved = np.flip(moved, axis=dimension - 1 - j)
            origin = origin + source_direction[:, k] * geometry.spacing[k] * (geometry.size[k] - 1)
    direction = np.stack([signs[j] * source_direction[:, k] for j, k in enumerate(source_axis)], axis=1)
    candidate = Geometry(
        tuple(geometry.size[k] for k in source_axis),
        tuple(geometry.spacing[k] for k in source_axis),
        tuple(float(o) for o in origin),
        tuple(float(d) for d in direction.reshape(-1)),
    )
    return np.ascontiguousarray(moved) if candidate.matches(target) else None


def onto_grid(
    array: np.ndarray, geometry: Geometry, path: Path, target: Geometry, target_path: Path, role: str = "image"
) -> tuple[np.ndarray, bool]:
    """``array`` of ``path`` on the grid of ``target_path``: unchanged if the geometries match, reoriented
    if that is exact (second value True), else :class:`VolumeError` with both geometries."""
    if geometry.matches(target):
        return array, False
    moved = reorient_onto(array, geometry, target)
    if moved is not None:
        return moved, True
    raise VolumeError(
        f"{path}: {geometry.describe()} does not match its {role} {target_path} ({target.describe()}), and no "
        f"reorientation maps one grid exactly onto the other; resample it onto its {role}'s grid (nearest "
        f"neighbour) or fix its header"
    )
