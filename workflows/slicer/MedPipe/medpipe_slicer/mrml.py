"""MRML nodes <-> files: the input volume out, the ``.seg.nrrd`` result in.

Only MRML (no Qt, no application object), so the same code runs inside Slicer and headless
with PyPI ``slicer-core``. The result becomes a segmentation node that

- keeps the segment names and colours the ``.seg.nrrd`` carries (the bundle's),
- has the input volume as its reference geometry (what Slicer's DICOM SEG export and the
  Segment Editor need), and
- sits in the subject hierarchy under the input volume's study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["save_volume", "load_volume", "load_segmentation", "load_file_job", "segments_of", "dicom_files_of"]


def _slicer() -> Any:
    import slicer  # Slicer itself, or PyPI slicer-core

    return slicer


def save_volume(volume_node: Any, path: str | Path) -> Path:
    """Write ``volume_node`` (its IJK-to-RAS geometry included) to a NRRD/NIfTI file."""
    path = Path(path)
    scene = volume_node.GetScene()
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storage.SetFileName(str(path))
        storage.SetUseCompression(True)
        if not storage.WriteData(volume_node):
            raise OSError(f"Slicer could not write volume {volume_node.GetName()!r} to {path}")
    finally:
        scene.RemoveNode(storage)
    return path


def _sh_item(sh: Any, node: Any) -> int:
    item = sh.GetItemByDataNode(node)
    if not item:  # headless MRML has no subject hierarchy plugins creating items
        item = sh.CreateItem(sh.GetSceneItemID(), node)
    return item


def _read_node(scene: Any, node_class: str, storage_class: str, path: Path, name: str, what: str) -> Any:
    """A new ``node_class`` node filled from ``path`` by a temporary storage node; nothing stays
    in the scene when Slicer cannot read the file."""
    node = scene.AddNewNodeByClass(node_class, name)
    storage = scene.AddNewNodeByClass(storage_class)
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise OSError(f"Slicer could not read the {what} {path}")
    scene.RemoveNode(storage)  # the node now lives in the scene; saving it is the user's choice
    return node


def load_volume(path: str | Path, scene: Any, name: str | None = None) -> Any:
    """A new scalar volume node read from ``path`` (a result image, e.g. a reconstruction)."""
    path = Path(path)
    return _read_node(scene, "vtkMRMLScalarVolumeNode", "vtkMRMLVolumeArchetypeStorageNode", path,
                      name or path.name.split(".")[0], "volume")


def load_file_job(client: Any, job: dict[str, Any], folder: str | Path, scene: Any, name: str) -> tuple[Any, Any]:
    """A done job started on a file Slicer cannot show (raw k-space): its image (the
    reconstruction) as a new volume node and its segmentation tied to that volume."""
    folder = Path(folder)
    if "image" not in job.get("results", []):
        raise OSError(f"the job's pipeline publishes no image to show the labels on (results: "
                      f"{', '.join(job.get('results', [])) or 'none'}); add a write_image stage to it")
    volume = load_volume(client.download(job["id"], folder / "image.nii.gz", fmt="image"), scene, name)
    seg = load_segmentation(client.download(job["id"], folder / "result.seg.nrrd"), volume, f"{name} labels")
    return volume, seg


def load_segmentation(path: str | Path, reference_volume: Any, name: str | None = None) -> Any:
    """A new segmentation node read from ``path``, tied to ``reference_volume`` and its study."""
    scene = reference_volume.GetScene()
    seg = _read_node(scene, "vtkMRMLSegmentationNode", "vtkMRMLSegmentationStorageNode", Path(path),
                     name or f"{reference_volume.GetName()} medpipe", "segmentation")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    seg.CreateDefaultDisplayNodes()
    sh = scene.GetSubjectHierarchyNode()
    if sh is not None:
        parent = sh.GetItemParent(_sh_item(sh, reference_volume))
        sh.SetItemParent(_sh_item(sh, seg), parent)
    return seg


def segments_of(seg_node: Any) -> list[dict[str, Any]]:
    """id, name, colour (0-1 RGB) and label value of every segment, in order."""
    s = seg_node.GetSegmentation()
    out = []
    for i in range(s.GetNumberOfSegments()):
        segment = s.GetNthSegment(i)
        out.append({"id": s.GetNthSegmentID(i), "name": segment.GetName(), "color": list(segment.GetColor()),
                    "label_value": segment.GetLabelValue()})
    return out


def dicom_files_of(volume_node: Any) -> list[str]:
    """The DICOM files a volume was loaded from (Slicer's DICOM module records their UIDs);
    empty for volumes that did not come from the DICOM database."""
    slicer = _slicer()
    uids = volume_node.GetAttribute("DICOM.instanceUIDs") if volume_node is not None else None
    db = getattr(slicer, "dicomDatabase", None)
    if not uids or db is None:
        return []
    files = [db.fileForInstance(uid) for uid in uids.split()]
    return [f for f in files if f]
