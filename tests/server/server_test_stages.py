"""Stage kinds for the server tests only (imported by the test server with --stage-module).

``t_two_organs`` is a real, tiny segmenter: two intensity bands become two named, coloured
structures on the study's own grid, as a bundle's labels would be. It can also sleep per
slice (to cancel it mid-run) or kill its own process (a crashed job).
"""

from __future__ import annotations

import os
import time

import numpy as np

from medpipe.pipeline.artifacts import ImageArtifact, LabelArtifact
from medpipe.pipeline.stage import Stage, StageParams, register_stage

ORGANS = {1: "liver", 2: "spleen"}
COLORS = {1: [221, 130, 101], 2: [157, 108, 162]}


@register_stage
class TwoOrgans(Stage):
    kind = "t_two_organs"
    description = "test: voxels in [low, high) -> liver, >= high -> spleen (named, coloured labels)"

    class Params(StageParams):
        low: float = 100.0
        high: float = 200.0
        sleep_s: float = 0.0  # per slice
        crash: bool = False

    inputs = {"image": ImageArtifact}
    outputs = {"labels": LabelArtifact}

    def run(self, inputs, ctx):
        if self.params.crash:
            os._exit(7)
        img = inputs["image"]
        arr = img.array[0]
        out = np.zeros(arr.shape, np.uint8)
        for k in ctx.track(range(arr.shape[2]), description="slices"):
            sl = arr[..., k]
            out[..., k][(sl >= self.params.low) & (sl < self.params.high)] = 1
            out[..., k][sl >= self.params.high] = 2
            if self.params.sleep_s:
                time.sleep(self.params.sleep_s)
        labels = img.with_array(out[None], is_label=True)
        labels.meta.extra["labels"] = dict(ORGANS)
        labels.meta.extra["colors"] = dict(COLORS)
        return {"labels": labels}
