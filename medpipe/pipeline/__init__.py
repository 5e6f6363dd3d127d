"""Pipelines: a YAML file declares a DAG of stages; the runner executes it on studies.

``load_pipeline`` validates a pipeline file (or shipped name) before anything runs;
``run_pipeline`` runs it on one study with caching, resume and provenance (run.json);
``run_studies`` runs it on many studies in parallel processes; ``run_stage`` runs a
single stage from artifacts on disk (the entry point for Snakemake/Airflow).
See docs/pipelines.md.
"""

from __future__ import annotations

from medpipe.pipeline.artifacts import (
    Artifact,
    FilesArtifact,
    ImageArtifact,
    LabelArtifact,
    StudyInputArtifact,
    TableArtifact,
)
from medpipe.pipeline.batch import run_studies
from medpipe.pipeline.discover import discover_studies
from medpipe.pipeline.graph import PipelineGraph
from medpipe.pipeline.runner import RunResult, run_pipeline, run_stage, study_name_of
from medpipe.pipeline.spec import PipelineSpec, load_pipeline, parse_pipeline, shipped_pipelines
from medpipe.pipeline.stage import Stage, StageContext, StageParams, get_stage, list_stages, register_stage

__all__ = [
    "Artifact",
    "FilesArtifact",
    "ImageArtifact",
    "LabelArtifact",
    "StudyInputArtifact",
    "TableArtifact",
    "PipelineGraph",
    "PipelineSpec",
    "RunResult",
    "Stage",
    "StageContext",
    "StageParams",
    "discover_studies",
    "get_stage",
    "list_stages",
    "load_pipeline",
    "parse_pipeline",
    "register_stage",
    "run_pipeline",
    "run_stage",
    "run_studies",
    "shipped_pipelines",
    "study_name_of",
]
