"""MedPipe: run medpipe pipelines on a volume from 3D Slicer, on a server or locally.

A ScriptedLoadableModule in the four usual classes: ``MedPipe`` (the module), ``MedPipeWidget``
(the panel), ``MedPipeLogic`` (no Qt: what the panel calls) and ``MedPipeTest``. All the work
that does not need Qt lives in ``medpipe_slicer`` next to this file (client, local runner,
MRML I/O), which is tested outside Slicer against a real ``medpipe serve``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import qt
import slicer
from medpipe_slicer import LocalRun, LocalRunError, MedPipeClient, ServerError, zip_dicom_files
from medpipe_slicer.local import describe_event
from medpipe_slicer.mrml import dicom_files_of, load_file_job, load_segmentation, save_volume, segments_of
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

_SETTINGS = "MedPipe"


class MedPipe(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        parent.title = "MedPipe"
        parent.categories = ["Segmentation"]
        parent.dependencies = []
        parent.contributors = ["medpipe developers"]
        parent.helpText = (
            "Run a medpipe pipeline (for example ct_organs) on the selected volume, on a medpipe server "
            "(<tt>medpipe serve</tt>) or locally (<tt>medpipe run</tt>). The result is a segmentation with the "
            "model's structure names and colours, under the volume's study.")
        parent.acknowledgementText = "medpipe is open source (Apache-2.0)."


class MedPipeLogic(ScriptedLoadableModuleLogic):
    """Runs a pipeline on a volume node and returns the segmentation node (no Qt in here)."""

    def _input_file(self, volume_node, folder: Path) -> Path:
        """The volume's own DICOM files (zipped; the server can then write a DICOM SEG), or the
        volume as NRRD when it did not come from the DICOM database."""
        files = dicom_files_of(volume_node)
        if files:
            return zip_dicom_files(files, folder / "series.zip")
        return save_volume(volume_node, folder / "volume.nrrd")

    def run_on_server(self, volume_node, url: str, token: str, pipeline: str, on_progress=None, should_cancel=None):
        client = MedPipeClient(url, token)
        with tempfile.TemporaryDirectory(prefix="medpipe-slicer-") as tmp:
            folder = Path(tmp)
            job = client.submit(pipeline, self._input_file(volume_node, folder))
            job = client.wait(job["id"], poll_s=0.5, on_progress=on_progress, should_cancel=should_cancel)
            if job["state"] != "done":
                raise ServerError(0, f"the job {job['state']}: {job.get('error') or 'no reason given'}")
            result = client.download(job["id"], folder / "result.seg.nrrd")
            return load_segmentation(result, volume_node, f"{volume_node.GetName()} {pipeline}"), job

    def run_file_on_server(self, path: str, url: str, token: str, pipeline: str, on_progress=None,
                           should_cancel=None):
        """A file Slicer cannot load itself (raw k-space, .h5): the server reconstructs it; the
        reconstruction comes back as a volume, the labels as a segmentation on it."""
        client = MedPipeClient(url, token)
        with tempfile.TemporaryDirectory(prefix="medpipe-slicer-") as tmp:
            job = client.submit(pipeline, path)
            job = client.wait(job["id"], poll_s=0.5, on_progress=on_progress, should_cancel=should_cancel)
            if job["state"] != "done":
                raise ServerError(0, f"the job {job['state']}: {job.get('error') or 'no reason given'}")
            volume, seg = load_file_job(client, job, tmp, slicer.mrmlScene, f"{Path(path).name.split('.')[0]} {pipeline}")
        slicer.util.setSliceViewerLayers(background=volume)
        return seg, job

    def run_locally(self, volume_node, python: str, pipeline: str, out_dir: str, on_event=None, run_holder=None):
        with tempfile.TemporaryDirectory(prefix="medpipe-slicer-") as tmp:
            source = self._input_file(volume_node, Path(tmp))
            run = LocalRun(python, pipeline, source, out_dir)
            if run_holder is not None:
                run_holder.append(run)
            summary = run.run(on_event)
        if summary["status"] != "done":
            raise LocalRunError(summary.get("error") or "the run failed")
        result = run.result_file(summary)
        if result is None:
            raise LocalRunError("the run wrote no .seg.nrrd (does the pipeline have a 'write' stage?)")
        return load_segmentation(result, volume_node, f"{volume_node.GetName()} {pipeline}"), summary


class MedPipeWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = MedPipeLogic()
        self._cancel = False
        self._local_runs = []
        settings = qt.QSettings()
        form = qt.QFormLayout()
        box = qt.QWidget()
        box.setLayout(form)
        self.layout.addWidget(box)

        self.volumeSelector = slicer.qMRMLNodeComboBox()
        self.volumeSelector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        self.volumeSelector.noneEnabled = False
        self.volumeSelector.setMRMLScene(slicer.mrmlScene)
        form.addRow("Input volume:", self.volumeSelector)
        self.fileEdit = qt.QLineEdit(settings.value(f"{_SETTINGS}/rawFile", ""))
        self.fileEdit.placeholderText = "or a raw k-space file (.h5) for a pipeline such as mri_brain (server mode)"
        self.fileEdit.toolTip = "When set, this file is sent instead of the volume; the result image comes back too"
        form.addRow("Raw data file:", self.fileEdit)

        self.modeSelector = qt.QComboBox()
        self.modeSelector.addItems(["server", "local"])
        self.modeSelector.currentText = settings.value(f"{_SETTINGS}/mode", "server")
        form.addRow("Run on:", self.modeSelector)

        self.serverEdit = qt.QLineEdit(settings.value(f"{_SETTINGS}/serverUrl", "http://127.0.0.1:8000"))
        form.addRow("Server:", self.serverEdit)
        self.tokenEdit = qt.QLineEdit(settings.value(f"{_SETTINGS}/token", ""))
        self.tokenEdit.echoMode = qt.QLineEdit.Password
        form.addRow("Token:", self.tokenEdit)
        self.pythonEdit = qt.QLineEdit(settings.value(f"{_SETTINGS}/python", "python3"))
        self.pythonEdit.toolTip = "The Python that has medpipe installed (local mode)"
        form.addRow("medpipe Python:", self.pythonEdit)

        row = qt.QHBoxLayout()
        self.pipelineSelector = qt.QComboBox()
        self.pipelineSelector.editable = True
        self.pipelineSelector.addItem(settings.value(f"{_SETTINGS}/pipeline", "ct_organs"))
        self.refreshButton = qt.QPushButton("Refresh")
        self.refreshButton.toolTip = "Ask the server which pipelines it offers"
        row.addWidget(self.pipelineSelector, 1)
        row.addWidget(self.refreshButton)
        form.addRow("Pipeline:", row)

        self.runButton = qt.QPushButton("Run")
        self.cancelButton = qt.QPushButton("Cancel")
        self.cancelButton.enabled = False
        buttons = qt.QHBoxLayout()
        buttons.addWidget(self.runButton)
        buttons.addWidget(self.cancelButton)
        form.addRow(buttons)
        self.progressBar = qt.QProgressBar()
        self.progressBar.setRange(0, 100)
        form.addRow(self.progressBar)
        self.statusLabel = qt.QLabel("")
        self.statusLabel.wordWrap = True
        form.addRow(self.statusLabel)
        self.layout.addStretch(1)

        self.refreshButton.connect("clicked(bool)", self.onRefresh)
        self.runButton.connect("clicked(bool)", self.onRun)
        self.cancelButton.connect("clicked(bool)", self.onCancel)

    def _remember(self):
        settings = qt.QSettings()
        settings.setValue(f"{_SETTINGS}/mode", self.modeSelector.currentText)
        settings.setValue(f"{_SETTINGS}/serverUrl", self.serverEdit.text)
        settings.setValue(f"{_SETTINGS}/token", self.tokenEdit.text)
        settings.setValue(f"{_SETTINGS}/python", self.pythonEdit.text)
        settings.setValue(f"{_SETTINGS}/pipeline", self.pipelineSelector.currentText)
        settings.setValue(f"{_SETTINGS}/rawFile", self.fileEdit.text)

    def _status(self, text, fraction=None):
        self.statusLabel.text = text
        if fraction is not None:
            self.progressBar.value = int(round(100 * fraction))
        slicer.app.processEvents()

    def onRefresh(self):
        try:
            names = MedPipeClient(self.serverEdit.text, self.tokenEdit.text).pipelines()
        except ServerError as exc:
            self._status(f"error: {exc}")
            return
        current = self.pipelineSelector.currentText
        self.pipelineSelector.clear()
        self.pipelineSelector.addItems(names)
        if current in names:
            self.pipelineSelector.currentText = current
        self._status(f"{len(names)} pipelines on {self.serverEdit.text}")

    def onCancel(self):
        self._cancel = True
        for run in self._local_runs:
            run.cancel()
        self._status("cancelling...")

    def _on_job(self, job):
        running = [f"{name}: {s.get('progress', {}).get('completed', '')}/{s.get('progress', {}).get('total', '')}"
                   if s.get("progress") else name for name, s in job["stages"].items() if s.get("status") == "running"]
        self._status(f"{job['state']} {', '.join(running)}", job.get("progress", 0.0))

    def _on_event(self, event):
        line = describe_event(event)
        if line:
            self._status(line)

    def onRun(self):
        raw = self.fileEdit.text.strip()
        volume = self.volumeSelector.currentNode()
        if raw and self.modeSelector.currentText != "server":
            self._status("error: raw data files run on a server (choose 'server')")
            return
        if volume is None and not raw:
            self._status("error: choose an input volume")
            return
        self._remember()
        self._cancel = False
        self._local_runs = []
        self.runButton.enabled = False
        self.cancelButton.enabled = True
        pipeline = self.pipelineSelector.currentText
        try:
            if raw:
                seg, _ = self.logic.run_file_on_server(raw, self.serverEdit.text, self.tokenEdit.text, pipeline,
                                                       on_progress=self._on_job, should_cancel=lambda: self._cancel)
            elif self.modeSelector.currentText == "server":
                seg, _ = self.logic.run_on_server(volume, self.serverEdit.text, self.tokenEdit.text, pipeline,
                                                  on_progress=self._on_job, should_cancel=lambda: self._cancel)
            else:
                out = os.path.join(slicer.app.temporaryPath, "medpipe-runs")
                seg, _ = self.logic.run_locally(volume, self.pythonEdit.text, pipeline, out,
                                                on_event=self._on_event, run_holder=self._local_runs)
            names = ", ".join(s["name"] for s in segments_of(seg))
            self._status(f"done: {names}", 1.0)
        except (ServerError, LocalRunError, OSError) as exc:
            self._status(f"error: {exc}")
        finally:
            self.runButton.enabled = True
            self.cancelButton.enabled = False


class MedPipeTest(ScriptedLoadableModuleTest):
    """Inside Slicer: a synthetic volume round trip and, when MEDPIPE_TEST_SERVER and
    MEDPIPE_TEST_TOKEN are set, a real job on that server."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_volume_round_trip()
        if os.environ.get("MEDPIPE_TEST_SERVER"):
            self.test_server_job()

    def _volume(self):
        import numpy as np

        node = slicer.util.addVolumeFromArray(np.zeros((24, 32, 32), np.int16), name="medpipe-test")
        arr = slicer.util.arrayFromVolume(node)
        arr[5:15, 5:15, 5:15] = 150
        arr[10:20, 20:28, 20:28] = 300
        slicer.util.arrayFromVolumeModified(node)
        return node

    def test_volume_round_trip(self):
        node = self._volume()
        with tempfile.TemporaryDirectory() as tmp:
            path = save_volume(node, Path(tmp) / "v.nrrd")
            self.assertTrue(path.is_file() and path.stat().st_size > 0)
        self.delayDisplay("volume written")

    def test_server_job(self):
        node = self._volume()
        pipeline = os.environ.get("MEDPIPE_TEST_PIPELINE", "ct_organs")
        seg, job = MedPipeLogic().run_on_server(node, os.environ["MEDPIPE_TEST_SERVER"],
                                                os.environ.get("MEDPIPE_TEST_TOKEN", ""), pipeline)
        self.assertEqual(job["state"], "done")
        self.assertGreater(len(segments_of(seg)), 0)
        self.delayDisplay("server job done")
