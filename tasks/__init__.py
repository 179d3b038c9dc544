"""Prefect tasks: thin, batched calls into the libraries (mmstore, workloads, envs)."""
