"""Classic DICOM networking (DIMSE) for PACS without DICOMweb: C-FIND, C-MOVE, C-STORE.

pynetdicom does the protocol. A C-MOVE needs a storage SCP of ours that the PACS sends the
instances to: the PACS must know our AE title (``calling_ae``) with the host and port we
listen on (``move_listen``); the SCP runs only for the length of one retrieve, accepts only
instances of the study asked for, and writes them to a private temporary folder.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medpipe.io.pacs import PacsError, PacsServer, uid_file_name

__all__ = ["DimseClient"]

_FIND_KEYS = ("StudyInstanceUID", "PatientID", "StudyDate", "StudyDescription", "AccessionNumber",
              "ModalitiesInStudy", "NumberOfStudyRelatedInstances")


def _listen_address(server: PacsServer) -> tuple[str, int]:
    host, _, port = server.move_listen.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise PacsError(f"{server.label}: move_listen {server.move_listen!r} must be HOST:PORT") from None


class DimseClient:
    """C-FIND / C-MOVE / C-STORE against one AE."""

    def __init__(self, server: PacsServer) -> None:
        self.server = server

    def _ae(self) -> Any:
        from pynetdicom import AE

        ae = AE(ae_title=self.server.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.server.timeout_s
        return ae

    def _associate(self, ae: Any, what: str) -> Any:
        assoc = ae.associate(self.server.host, self.server.port, ae_title=self.server.ae_title)
        if not assoc.is_established:
            raise PacsError(f"{self.server.label} refused or did not answer the association for {what} "
                            f"(is AE {self.server.calling_ae!r} allowed there?)")
        return assoc

    def find_studies(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        from pydicom.dataset import Dataset
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        for key in _FIND_KEYS:
            setattr(query, key, filters.get(key, ""))
        ae = self._ae()
        ae.add_requested_context(FIND)
        assoc = self._associate(ae, "C-FIND")
        rows = []
        try:
            for status, ident in assoc.send_c_find(query, FIND):
                code = getattr(status, "Status", None)
                if code in (0xFF00, 0xFF01) and ident is not None:
                    rows.append({k: str(ident.get(k, "")) for k in _FIND_KEYS if ident.get(k, "") != ""})
                elif code is not None and code != 0x0000:
                    raise PacsError(f"{self.server.label} answered C-FIND with status 0x{code:04X}")
        finally:
            assoc.release()
        return rows

    def iter_study(self, study_uid: str) -> Iterator[Any]:
        import pydicom
        from pydicom.dataset import Dataset
        from pynetdicom import AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

        tmp = Path(tempfile.mkdtemp(prefix="medpipe-cmove-"))
        lock = threading.Lock()
        received: list[Path] = []

        def on_store(event: Any) -> int:
            ds = event.dataset
            if str(ds.get("StudyInstanceUID", "")) != study_uid:
                return 0xA900  # dataset does not match the SOP class: not the study we asked for
            try:
                name = uid_file_name(str(ds.SOPInstanceUID))
            except PacsError:
                return 0xA900
            ds.file_meta = event.file_meta
            path = tmp / f"{name}.dcm"
            ds.save_as(str(path), enforce_file_format=True)
            with lock:
                received.append(path)
            return 0x0000

        scp = self._ae()
        scp.supported_contexts = AllStoragePresentationContexts
        host, port = _listen_address(self.server)
        try:
            server = scp.start_server((host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise PacsError(f"cannot listen on {host}:{port} for the C-MOVE ({exc.strerror})") from None
        try:
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = study_uid
            ae = self._ae()
            ae.add_requested_context(MOVE)
            assoc = self._associate(ae, "C-MOVE")
            try:
                final = None
                for status, _ in assoc.send_c_move(query, self.server.calling_ae, MOVE):
                    final = getattr(status, "Status", None)
            finally:
                assoc.release()
            if final not in (0x0000, None):
                raise PacsError(f"{self.server.label} answered C-MOVE of study {study_uid} with status 0x{final:04X} "
                                f"(does it know AE {self.server.calling_ae!r} at {host}:{port}?)")
        finally:
            server.shutdown()
        try:
            for path in sorted(received):
                yield pydicom.dcmread(str(path))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def store(self, files: list[Path]) -> list[str]:
        import pydicom

        datasets = [pydicom.dcmread(str(f)) for f in files]
        ae = self._ae()
        pairs = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
        for sop_class, ts in pairs:
            ae.add_requested_context(sop_class, [ts])
        assoc = self._associate(ae, "C-STORE")
        stored = []
        try:
            for f, ds in zip(files, datasets, strict=True):
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code != 0x0000:
                    shown = "no answer" if code is None else f"status 0x{code:04X}"
                    raise PacsError(f"{self.server.label} did not store {f} with C-STORE ({shown})")
                stored.append(str(ds.SOPInstanceUID))
        finally:
            assoc.release()
        return stored
