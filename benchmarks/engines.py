"""One pipeline file, three engines: ct_organs under ``medpipe run``, Snakemake and Airflow.

Runs the shipped ``ct_organs`` pipeline on the same small CT studies (DICOM phantoms) with
each engine, in one script so a loaded machine affects all three alike, checks that every
published artifact has the same content hash in all three run folders, and records the
wall time of each engine and its overhead per study against ``medpipe run``.

Every engine starts ``medpipe`` as a command: ``medpipe run`` once per batch (one worker
process per study), Snakemake and Airflow once per (study, stage) job, which is where
their overhead comes from (process start, imports, re-reading artifacts from disk).
Snakemake uses the local profile with 2 cores; Airflow runs the ready DAG
(``workflows/airflow/medpipe_ct_organs.py``, settings from Airflow Variables) with
``dag.test()``, which runs its tasks one after another.

Needs the engine venvs (``make engines``). Run: python benchmarks/engines.py [--studies 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._results import markdown_table, record  # noqa: E402

SNAKEMAKE_VENV = Path(os.environ.get("MEDPIPE_SNAKEMAKE_VENV", REPO / ".venv-snakemake"))
AIRFLOW_VENV = Path(os.environ.get("MEDPIPE_AIRFLOW_VENV", REPO / ".venv-airflow"))
AIRFLOW_DIR = REPO / "workflows" / "airflow"


def make_ct_studies(folder: Path, n: int = 3, shape=(40, 36, 24), spacing=(4.0, 4.0, 5.0)) -> Path:
    """``n`` CT phantom studies as DICOM series (small: 80x72x60 voxels at the bundle's 2 mm)."""
    from medpipe.data.dicom_writer import write_dicom_series
    from medpipe.data.phantoms import ct_phantom

    for i in range(n):
        ct, _ = ct_phantom(shape, spacing, seed=20 + i)
        write_dicom_series(ct, folder / f"ct_{i}", seed=20 + i, patient_id=f"ENGINES{i:03d}")
    return folder


def engine_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["MEDPIPE_COMMAND"] = f"{shlex.quote(sys.executable)} -m medpipe"
    env.update(extra)
    return env


def _check(proc: subprocess.CompletedProcess[str], what: str, allow_failures: bool = False) -> None:
    """A failed command raises; with ``allow_failures`` exit 1 (some study failed, medpipe's own
    verdict: the others finished) is accepted, anything else still raises."""
    if proc.returncode != 0 and not (allow_failures and proc.returncode == 1):
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")


def run_medpipe(pipeline: str, studies: Path, out: Path, env: dict[str, str], jobs: int = 1,
                allow_failures: bool = False) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "medpipe", "run", pipeline, str(studies), "-o", str(out),
                           "--jobs", str(jobs)], env=env, capture_output=True, text=True, check=False)
    _check(proc, "medpipe run", allow_failures)
    return time.perf_counter() - t0


def run_snakemake(pipeline: str, studies: Path, out: Path, env: dict[str, str], workdir: Path, cores: int = 2,
                  allow_failures: bool = False) -> float:
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [str(SNAKEMAKE_VENV / "bin" / "snakemake"), "-s", str(REPO / "workflows/snakemake/Snakefile"),
           "--profile", str(REPO / "workflows/snakemake/profiles/local"), "--cores", str(cores),
           "--config", f"pipeline={pipeline}", f"studies={studies}", f"out={out}", f"medpipe={env['MEDPIPE_COMMAND']}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, check=False)
    _check(proc, "snakemake", allow_failures)
    return time.perf_counter() - t0


def airflow_home(home: Path, env: dict[str, str], pipeline: str = "ct_organs") -> dict[str, str]:
    """A fresh AIRFLOW_HOME (SQLite, migrated) whose DAGs folder holds the pipeline's ready DAG."""
    (home / "dags").mkdir(parents=True, exist_ok=True)
    for f in ("medpipe_airflow.py", f"medpipe_{pipeline}.py"):
        shutil.copy(AIRFLOW_DIR / f, home / "dags" / f)
    env = {**env, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    proc = subprocess.run([str(AIRFLOW_VENV / "bin" / "airflow"), "db", "migrate"], env=env, capture_output=True,
                          text=True, check=False)
    _check(proc, "airflow db migrate")
    return env


def run_airflow(studies: Path, out: Path, env: dict[str, str], pipeline: str = "ct_organs",
                allow_failures: bool = False) -> tuple[float, dict]:
    """The pipeline's ready DAG, its settings in Airflow Variables; (wall time, task states).

    With ``allow_failures`` a failed run is accepted (a broken study fails its own tasks)."""
    airflow = str(AIRFLOW_VENV / "bin" / "airflow")
    dag_id = f"medpipe_{pipeline}"
    for name, value in (("studies_dir", studies), ("out", out)):
        proc = subprocess.run([airflow, "variables", "set", f"{dag_id}_{name}", str(value)], env=env,
                              capture_output=True, text=True, check=False)
        _check(proc, "airflow variables set")
    dag_file = Path(env["AIRFLOW__CORE__DAGS_FOLDER"]) / f"{dag_id}.py"
    t0 = time.perf_counter()
    proc = subprocess.run([str(AIRFLOW_VENV / "bin" / "python"), str(AIRFLOW_DIR / "dag_test.py"), str(dag_file),
                           dag_id], env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - t0
    _check(proc, "airflow dag.test")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("RESULT ", "IMPORT_ERROR "))]
    if not lines or lines[-1].startswith("IMPORT_ERROR"):
        raise RuntimeError(f"the {pipeline} DAG did not load: {lines[-1] if lines else proc.stdout[-2000:]}")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    if result["state"] != "success" and not allow_failures:
        raise RuntimeError(f"the {pipeline} DAG run ended {result['state']}: {result['states']}\n{proc.stdout[-4000:]}")
    return took, result


def run_server(pipeline: str, studies: Path, out: Path, env: dict[str, str], state: Path) -> tuple[float, dict]:
    """Every study uploaded to one ``medpipe serve`` (the Slicer module's client), one after
    another; each finished job's run folder is copied to ``out/<study>`` for comparison.
    Returns (wall time, {study: job record or {"refused": message}})."""
    sys.path.insert(0, str(REPO / "tests" / "helpers"))
    sys.path.insert(0, str(REPO / "workflows" / "slicer" / "MedPipe"))
    from medpipe_slicer import MedPipeClient, ServerError
    from services import MedpipeServer

    files = sorted(p for p in studies.iterdir() if p.is_file())
    limit = max(p.stat().st_size for p in files) / 2**20 + 8
    srv = MedpipeServer(state, REPO / "pipelines", workers=1, max_upload_mb=limit, env=env, stage_module=None).start()
    records: dict[str, dict] = {}
    t0 = time.perf_counter()
    try:
        client = MedPipeClient(srv.url, srv.token, timeout=120)
        for path in files:
            name = path.name.split(".")[0]
            try:
                job = client.submit(pipeline, path)
            except ServerError as exc:
                records[name] = {"refused": str(exc)}
                continue
            records[name] = client.wait(job["id"], poll_s=0.5, timeout=3600)
            run_dir = state / "jobs" / job["id"] / "run" / records[name]["study"]
            shutil.copytree(run_dir, out / records[name]["study"])
    finally:
        srv.stop()
    return time.perf_counter() - t0, records


# The server stores an upload in its job folder: the input record names that path, which no other
# engine can share (its content hash, and so every cache key downstream, is the same).
SERVER_OWN_FILES = ("artifacts/input/study.json", "artifacts/input/_record.json")


def compare(outs: dict[str, Path], studies: list[str]) -> dict[str, tuple[int, list[str]]]:
    """engine -> (files compared, files whose hash differs from medpipe run's)."""
    from medpipe.pipeline.provenance import published_hashes

    ref = {s: published_hashes(outs["medpipe run"] / s) for s in studies}
    found: dict[str, tuple[int, list[str]]] = {}
    for engine, out in outs.items():
        n, bad = 0, []
        for s in studies:
            got = published_hashes(out / s)
            keys = set(got) | set(ref[s])
            if engine == "server":
                keys -= set(SERVER_OWN_FILES)
            n += len(keys)
            bad += [f"{s}/{k}" for k in sorted(keys) if got.get(k) != ref[s].get(k)]
        found[engine] = (n, bad)
    return found


def run_engines(pipeline: str, studies: Path, work: Path, *, server: bool = False,
                allow_failures: bool = False) -> dict:
    """``pipeline`` on every study of ``studies`` under each engine (shared autotune cache, the
    same thread count): medpipe run, Snakemake, Airflow and, with ``server``, ``medpipe serve``.
    Returns wall times, output folders, per-engine hash comparison against medpipe run, the
    Airflow task states and the server's job records."""
    env = engine_env(MEDPIPE_CACHE=str(work / "cache"), OMP_NUM_THREADS="2")
    outs = {"medpipe run": work / "out_medpipe", "Snakemake": work / "out_snakemake", "Airflow": work / "out_airflow"}
    walls = {"medpipe run": run_medpipe(pipeline, studies, outs["medpipe run"], env, allow_failures=allow_failures)}
    walls["Snakemake"] = run_snakemake(pipeline, studies, outs["Snakemake"], env, work / "snakemake",
                                       allow_failures=allow_failures)
    af_env = airflow_home(work / "airflow", env, pipeline)
    walls["Airflow"], states = run_airflow(studies, outs["Airflow"], af_env, pipeline, allow_failures)
    jobs: dict = {}
    if server:
        outs["server"] = work / "out_server"
        walls["server"], jobs = run_server(pipeline, studies, outs["server"], env, work / "server_state")
    names = sorted(p.name for p in outs["medpipe run"].iterdir() if (p / "run.json").is_file()
                   and json.loads((p / "run.json").read_text()).get("status") == "done")
    return {"studies": names, "walls": walls, "outs": outs, "compare": compare(outs, names), "airflow": states,
            "server_jobs": jobs}


def run_all(work: Path, n_studies: int = 3, shape: tuple[int, int, int] = (40, 36, 24)) -> dict:
    """All three engines on the same CT studies (shared autotune cache, same threads)."""
    studies = make_ct_studies(work / "studies", n_studies, shape=shape)
    return run_engines("ct_organs", studies, work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=3)
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp folder)")
    args = ap.parse_args()
    load_before = os.getloadavg()
    work = args.keep or Path(tempfile.mkdtemp(prefix="medpipe-engines-"))
    try:
        res = run_all(work, args.studies)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    n = len(res["studies"])
    base = res["walls"]["medpipe run"]
    rows = []
    for engine, wall in res["walls"].items():
        files, bad = res["compare"][engine]
        rows.append([engine, f"{wall:.1f}", f"{wall / n:.1f}", f"{(wall - base) / n:+.1f}",
                     f"{files - len(bad)}/{files}" + (" (differ: " + ", ".join(bad[:5]) + ")" if bad else "")])
    body = (
        f"ct_organs on {n} CT phantom studies (DICOM, 40x36x24 at 4x4x5 mm; 80x72x60 at the bundle's 2 mm). "
        f"Load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (2 cores shared with other agents: "
        "timings are upper bounds). Snakemake: local profile, 2 cores; Airflow: `dag.test()` of the ready DAG, "
        "tasks one after another.\n\n"
        + markdown_table(["engine", "wall s", "s / study", "overhead s / study vs medpipe run",
                          "published files identical to medpipe run"], rows)
        + "\n\n`organs.dcm` (DICOM SEG) is compared without its SOP/Series Instance UIDs and creation times, "
        "which every writing of a DICOM object mints anew; every other file byte for byte "
        "(`medpipe.pipeline.provenance.published_hashes`)."
    )
    print(body)
    record("engines", "One pipeline file, three engines (ct_organs: medpipe run, Snakemake, Airflow)", body)
    if any(bad for _, bad in res["compare"].values()):
        raise SystemExit("published artifacts differ between engines")


if __name__ == "__main__":
    main()
