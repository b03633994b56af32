"""The Python API of the user-space KML library in one import: re-exports only.

Each name lives in the module that owns it -- :mod:`kmlbench.kml.build`
(building ``libkml.so``), :mod:`kmlbench.kml.ffi` (loading it, errors, Q16
conversion), :mod:`kmlbench.kml.model`, :mod:`kmlbench.kml.ring`,
:mod:`kmlbench.kml.ops` (math and layer functions) and
:mod:`kmlbench.kml.deadline` (the deadline target and calibration) -- and
code in this repository imports it from there.  This facade stays because
docs/kml.md documents ``from kmlbench.kml import lib as kml`` as the way to
use the library from a script or notebook, and it keeps such code working.

    from kmlbench.kml import lib as kml
    m = kml.Model.mlp(8, hidden=[16], activation="relu", output="sigmoid")
"""

from __future__ import annotations

from kmlbench.kml.build import KmlBuildError, build_libkml
from kmlbench.kml.deadline import (
    DD_CAL_MIN_CLASS,
    DD_RESID,
    DD_SAMPLE_BYTES,
    dd_cal_fit,
    dd_calibrate,
    dd_lg_us,
    dd_permille,
    dd_residuals,
    dd_targets,
)
from kmlbench.kml.ffi import KmlError, from_q16, lib, to_q16
from kmlbench.kml.model import Model
from kmlbench.kml.ops import (
    act_backward,
    act_forward,
    bce_backward,
    bce_forward,
    linear_backward,
    linear_forward,
    math,
    mse_backward,
    mse_forward,
)
from kmlbench.kml.ring import RING_MODES, Ring

__all__ = [
    "DD_CAL_MIN_CLASS",
    "DD_RESID",
    "DD_SAMPLE_BYTES",
    "RING_MODES",
    "KmlBuildError",
    "KmlError",
    "Model",
    "Ring",
    "act_backward",
    "act_forward",
    "bce_backward",
    "bce_forward",
    "build_libkml",
    "dd_cal_fit",
    "dd_calibrate",
    "dd_lg_us",
    "dd_permille",
    "dd_residuals",
    "dd_targets",
    "from_q16",
    "lib",
    "linear_backward",
    "linear_forward",
    "math",
    "mse_backward",
    "mse_forward",
    "to_q16",
]
