"""The coordinator's side: the query language, the planner, the federation that runs queries over stations,
and result tables. Batch jobs (:mod:`better.jobs`) and the ``better`` CLI (:mod:`better.cli`) sit above it."""
