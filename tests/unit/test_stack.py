"""candleflow.stack: the local stand-ins' lifetimes stay consistent across `make down` / `make up`."""

from __future__ import annotations

from candleflow.stack import LocalStack, Ports


def test_a_new_moto_starts_the_mlflow_registry_afresh_a_running_one_keeps_it(tmp_path):
    """moto holds MLflow's artifacts in memory: a registry surviving a moto restart names models
    whose files are gone (a second `make up` failed promoting against the old champion)."""
    stack = LocalStack(tmp_path / "stack", Ports.free())
    registry = stack.state_dir / "mlflow.db"
    registry.parent.mkdir(parents=True)
    registry.write_bytes(b"a registry whose artifacts lived in the previous moto")
    try:
        pid = stack.start("moto")
        assert not registry.exists()
        registry.write_bytes(b"the registry of this moto")
        assert stack.start("moto") == pid   # already running: nothing restarted, nothing dropped
        assert registry.read_bytes() == b"the registry of this moto"
    finally:
        stack.stop("moto")
