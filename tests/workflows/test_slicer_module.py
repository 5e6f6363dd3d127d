"""The Slicer module outside Slicer: its MRML side headless (PyPI slicer-core), its local
mode against a real ``medpipe run``, and the module files Slicer's build needs.

(The client library is exercised against a real server by tests/server/.)
"""

from __future__ import annotations

import ast
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from services import SLICER_MODULE, subprocess_env, write_test_pipelines  # noqa: E402

sys.path.insert(0, str(SLICER_MODULE))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from medpipe.image import Image  # noqa: E402
from medpipe.io.slicer_seg import read_seg_nrrd, write_seg_nrrd  # noqa: E402
from medpipe.io.volumes import read_volume  # noqa: E402

AFFINE = np.array([[-1.5, 0, 0, 40.0], [0, 1.25, 0, -10.0], [0, 0, 2.0, 30.0], [0, 0, 0, 1]])
NAMES = {1: "liver", 2: "spleen", 3: "pancreas"}
COLORS = {1: (221, 130, 101), 2: (157, 108, 162), 3: (249, 180, 111)}


def _labels() -> Image:
    lab = np.zeros((20, 24, 16), np.uint8)
    lab[2:8, 3:9, 4:10] = 1
    lab[10:15, 10:20, 5:12] = 2  # pancreas (3) is named but absent: still a segment
    img = Image(lab[None], AFFINE, is_label=True)
    img.meta.extra.update(labels=dict(NAMES), colors={k: list(v) for k, v in COLORS.items()})
    return img


def test_seg_nrrd_round_trip_keeps_names_colours_geometry(tmp_path: Path) -> None:
    import slicerio

    path = write_seg_nrrd(_labels(), tmp_path / "organs.seg.nrrd", NAMES, COLORS)
    seg = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in seg["segments"]] == ["liver", "spleen", "pancreas"]
    assert [s["labelValue"] for s in seg["segments"]] == [1, 2, 3]
    assert seg["segments"][2]["extent"] == [0, -1, 0, -1, 0, -1]
    back = read_seg_nrrd(path)
    assert np.array_equal(back.array, _labels().array) and np.allclose(back.affine, AFFINE)
    assert back.meta.extra["labels"] == NAMES
    assert {k: tuple(v) for k, v in back.meta.extra["colors"].items()} == COLORS


slicer = pytest.importorskip("slicer", reason="PyPI slicer-core (MRML without Qt) is not installed")


def _volume_node(scene, arr: np.ndarray, affine: np.ndarray):
    import vtk
    from vtk.util import numpy_support

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    data = vtk.vtkImageData()
    data.SetDimensions(*arr.shape)
    flat = np.ascontiguousarray(arr.transpose(2, 1, 0)).ravel()  # VTK: x fastest
    data.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat, deep=True, array_type=vtk.VTK_SHORT))
    node.SetAndObserveImageData(data)
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, affine[r, c])
    node.SetIJKToRASMatrix(m)
    return node


def _scene_with_study():
    scene = slicer.vtkMRMLScene()
    arr = (np.arange(20 * 24 * 16) % 400).astype(np.int16).reshape(20, 24, 16)
    volume = _volume_node(scene, arr, AFFINE)
    sh = scene.GetSubjectHierarchyNode()
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Phantom^Abdomen"), "CT study")
    sh.CreateItem(study, volume)
    return scene, volume, arr, sh, study


def test_volume_node_to_file_keeps_voxels_and_geometry(tmp_path: Path) -> None:
    from medpipe_slicer.mrml import save_volume

    scene, volume, arr, _, _ = _scene_with_study()
    path = save_volume(volume, tmp_path / "ct.nrrd")
    img = read_volume(path)
    assert img.shape == arr.shape and np.array_equal(img.array[0], arr)
    assert np.allclose(img.affine, AFFINE, atol=1e-6)
    assert scene.GetNodesByClass("vtkMRMLVolumeArchetypeStorageNode").GetNumberOfItems() == 0  # cleaned up


def test_seg_nrrd_becomes_a_segmentation_node_under_the_study(tmp_path: Path) -> None:
    import slicerio
    from medpipe_slicer.mrml import load_segmentation, segments_of

    scene, volume, _, sh, study = _scene_with_study()
    path = write_seg_nrrd(_labels(), tmp_path / "organs.seg.nrrd", NAMES, COLORS)
    seg = load_segmentation(path, volume, "CT organs")
    assert seg.GetName() == "CT organs"
    info = segments_of(seg)
    assert [s["name"] for s in info] == ["liver", "spleen", "pancreas"]
    for s, value in zip(info, (1, 2, 3), strict=True):
        assert np.allclose(np.array(s["color"]) * 255, COLORS[value], atol=0.6)
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == study
    geometry = seg.GetSegmentation().GetConversionParameter("Reference image geometry")
    numbers = [float(x) for x in geometry.strip(";").split(";")]
    assert np.allclose(np.array(numbers[:16]).reshape(4, 4), AFFINE)  # the volume's IJK-to-RAS
    assert numbers[16:] == [0, 19, 0, 23, 0, 15]
    assert seg.GetDisplayNode() is not None

    # Slicer writes it back as a .seg.nrrd that slicerio reads with the same names and voxels
    out = tmp_path / "saved.seg.nrrd"
    st = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    st.SetFileName(str(out))
    assert st.WriteData(seg)
    back = slicerio.read_segmentation(str(out))
    assert {s["name"] for s in back["segments"]} == set(NAMES.values())
    liver = slicerio.segment_from_name(back, "liver")
    assert slicerio.extract_segments(back, [(liver["name"], 1)])["voxels"].sum() == (_labels().array == 1).sum()


def test_local_mode_streams_progress_and_returns_the_segmentation(tmp_path: Path) -> None:
    from medpipe_slicer import LocalRun, LocalRunError
    from medpipe_slicer.local import describe_event

    from medpipe.io.volumes import write_volume

    pipelines = write_test_pipelines(tmp_path / "pipelines")
    a = np.zeros((32, 32, 24), np.float32)
    a[5:15, 5:15, 5:15] = 150
    a[20:28, 20:28, 10:20] = 300
    study = write_volume(Image(a[None], np.diag([1.5, 1.5, 2.0, 1.0])), tmp_path / "volume.nrrd")
    env = subprocess_env(pipelines)
    env["MEDPIPE_STAGE_MODULES"] = "server_test_stages"  # the test's stage kinds, as a site would add its own

    run = LocalRun(sys.executable, "t_fast", study, tmp_path / "runs", env=env)
    events: list[dict] = []
    summary = run.run(events.append)
    assert summary["status"] == "done", (summary, run.stderr)
    starts = [e["stage"] for e in events if e["event"] == "stage_start"]
    assert starts == ["load", "seg", "write"]
    assert any(e["event"] == "track" and e["stage"] == "seg" for e in events)
    assert describe_event({"event": "stage_end", "stage": "seg", "status": "done"}) == "seg: done"
    seg_file = run.result_file(summary)
    assert seg_file is not None and seg_file.name == "organs.seg.nrrd"
    back = read_seg_nrrd(seg_file)
    assert back.meta.extra["labels"] == {1: "liver", 2: "spleen"}
    assert (back.array == 2).sum() == 8 * 8 * 10

    slow = LocalRun(sys.executable, "t_slow", study, tmp_path / "runs-slow", env=env)
    seen = threading.Event()

    def on_event(e: dict) -> None:
        if e["event"] == "track":
            seen.set()

    outcome: list[BaseException] = []

    def target() -> None:
        try:
            slow.run(on_event)
        except BaseException as exc:  # noqa: BLE001 (checked below, in the test thread)
            outcome.append(exc)

    worker = threading.Thread(target=target, daemon=True)
    t0 = time.monotonic()
    worker.start()
    assert seen.wait(120)
    slow.cancel()
    worker.join(30)
    assert not worker.is_alive() and time.monotonic() - t0 < 120
    assert len(outcome) == 1 and isinstance(outcome[0], LocalRunError) and str(outcome[0]) == "cancelled"
    assert slow._proc.poll() is not None


def test_module_files_are_what_slicer_expects() -> None:
    source = (SLICER_MODULE / "MedPipe.py").read_text()
    tree = ast.parse(source)
    bases = {node.name: [ast.unparse(b) for b in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)}
    assert bases == {"MedPipe": ["ScriptedLoadableModule"], "MedPipeLogic": ["ScriptedLoadableModuleLogic"],
                     "MedPipeWidget": ["ScriptedLoadableModuleWidget"], "MedPipeTest": ["ScriptedLoadableModuleTest"]}
    cmake = (SLICER_MODULE / "CMakeLists.txt").read_text()
    listed = set(re.findall(r"^\s+(\S+\.(?:py|png))$", cmake, re.M))
    on_disk = {p.relative_to(SLICER_MODULE).as_posix() for p in SLICER_MODULE.rglob("*")
               if p.suffix in (".py", ".png") and "__pycache__" not in p.parts and p.name != "MedPipe.py"}
    assert {x.replace("${MODULE_NAME}", "MedPipe") for x in listed} == on_disk | {"MedPipe.py"}
    assert "slicerMacroBuildScriptedModule" in cmake and "add_subdirectory(MedPipe)" in (
        SLICER_MODULE.parent / "CMakeLists.txt").read_text()


@pytest.mark.slow
def test_a_kspace_file_comes_back_as_the_reconstruction_with_its_labels(tmp_path: Path) -> None:
    """What the module's "Raw data file" does: a k-space .h5 to a real server running mri_brain;
    the reconstruction becomes a volume node and the labels a segmentation on its grid."""
    from medpipe_slicer import MedPipeClient
    from medpipe_slicer.mrml import load_file_job, segments_of
    from services import REPO, MedpipeServer

    from medpipe.data.mri_brain_studies import write_mri_brain_study

    study = write_mri_brain_study(tmp_path / "in", "brain", seed=3, matrix=48, pixel_mm=4.0, slices=14,
                                  slice_mm=8.0)["file"]
    srv = MedpipeServer(tmp_path / "state", REPO / "pipelines", max_upload_mb=16, stage_module=None).start()
    try:
        client = MedPipeClient(srv.url, srv.token, timeout=120)
        job = client.wait(client.submit("mri_brain", study)["id"], poll_s=0.5, timeout=900)
        assert job["state"] == "done" and job["study"] == "brain", job
        assert job["results"] == ["seg.nrrd", "nifti", "dicom_seg", "image"]
        scene = slicer.vtkMRMLScene()
        volume, seg = load_file_job(client, job, tmp_path / "dl", scene, "brain mri_brain")
    finally:
        srv.stop()
    recon = read_volume(srv.state / "jobs" / job["id"] / "run" / "brain" / "artifacts" / "cirim" / "image.nii.gz")
    assert tuple(volume.GetImageData().GetDimensions()) == recon.shape
    import vtk

    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    assert np.allclose([[m.GetElement(r, c) for c in range(4)] for r in range(4)], recon.affine, atol=1e-4)
    assert [s["name"] for s in segments_of(seg)] == ["grey_matter", "white_matter", "lesion"]
    geometry = seg.GetSegmentation().GetConversionParameter("Reference image geometry")
    numbers = [float(x) for x in geometry.strip(";").split(";")]
    assert np.allclose(np.array(numbers[:16]).reshape(4, 4), recon.affine, atol=1e-4)
