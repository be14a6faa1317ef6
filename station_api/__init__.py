"""The station server: configuration, auth, policies, jobs and audit (FastAPI)."""
