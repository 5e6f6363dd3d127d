"""The Slicer-free half of the MedPipe Slicer module.

Everything here runs in Slicer's Python *and* in a plain Python (the tests run it against a
real ``medpipe serve``): ``client`` talks to the server with the standard library only
(nothing to pip-install into Slicer), ``local`` runs ``medpipe run --events`` as a
subprocess and streams its progress, ``mrml`` moves volumes and segmentations between MRML
nodes and files (it needs the ``slicer`` module: Slicer itself, or PyPI ``slicer-core``).
"""

from medpipe_slicer.client import MedPipeClient, ServerError, zip_dicom_files
from medpipe_slicer.local import LocalRun, LocalRunError

__all__ = ["MedPipeClient", "ServerError", "zip_dicom_files", "LocalRun", "LocalRunError"]
