"""The query side: DSL, planner, coordinator, batch jobs, reports and the ``better`` CLI."""
