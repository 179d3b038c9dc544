"""Flow: recover a set (use case U4) — rebuild its chain, recover, verify, export, report."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.params import RecoverParameters
from tasks.store import export_set, recover_set, resolve_chain, resolve_set

__all__ = ["recover_model_set"]


@flow(name="recover-model-set")
def recover_model_set(params: RecoverParameters) -> dict:
    """Recover the models of a set, check every byte, and write one `.safetensors` file per model."""
    start = time.perf_counter()
    set_id = resolve_set(params.store, params.set)
    chain = resolve_chain(params.store, set_id)
    model_set, verified = recover_set(params.store, set_id, params.models, params.executor)
    files = export_set(model_set, params.output, set_id, params.models)
    report = {"set": set_id, "models": len(model_set), "chain": [c["id"] for c in chain],
              "verified": set_id in verified, "files": len(files), "output": params.output,
              "seconds": round(time.perf_counter() - start, 3), "executor": params.executor}
    create_markdown_artifact(_markdown(report, chain), key="recovery", description=f"Recovery of {set_id[:12]}")
    get_run_logger().info("recovered %d models of %s into %s", len(model_set), set_id[:12], params.output)
    return report


def _markdown(report: dict, chain: list[dict]) -> str:
    rows = "\n".join(f"| `{c['id'][:12]}` | {c['approach']} | {c['created']} | {c['n_models']} |" for c in chain)
    return (
        f"## Recovered set `{report['set'][:12]}`\n\n"
        f"- models: **{report['models']}**, exported to `{report['output']}` ({report['files']} files)\n"
        f"- verification: **{'passed' if report['verified'] else 'FAILED'}**\n"
        f"- time: {report['seconds']} s, replay executor: {report['executor']}\n\n"
        f"### Chain (newest first)\n\n| set | approach | created | models |\n|---|---|---|---|\n{rows}\n"
    )
