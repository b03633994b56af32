"""Running a matrix: plan -> cells -> records in a run folder."""
