"""Many runs → one report: the study plan (run keys, overrides, paths), tables across runs, claims,
statistics, provenance, figures, estimates and the workflow's jobs. Builds on :mod:`qsmrep.run`."""
