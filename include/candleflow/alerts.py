"""Failure alerts: what a message says, independent of how it is delivered.

The Airflow notifier (`candleflow_airflow.notifiers.WebhookNotifier`) gathers the facts from the
task context and delivers the payload built here to the webhook of an Airflow HTTP connection.
The payload is Slack-compatible (`text` is what a person reads) and carries the same facts as
structured fields under `candleflow` for machines (PagerDuty, Opsgenie, a log sink).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MAX_ERROR_CHARS = 1500


@dataclass(frozen=True)
class FailureAlert:
    dag_id: str
    task_id: str
    run_id: str
    try_number: int | None = None
    map_index: int | None = None
    logical_date: str | None = None
    error: str | None = None
    log_url: str | None = None
    owner: str | None = None

    @property
    def task_label(self) -> str:
        if self.map_index is not None and self.map_index >= 0:
            return f"{self.task_id}[{self.map_index}]"
        return self.task_id


def failure_text(alert: FailureAlert) -> str:
    """One readable message: what failed, where, and the error's own words."""
    lines = [f":red_circle: candleflow: task {alert.task_label} of DAG {alert.dag_id} failed"]
    where = f"run {alert.run_id}"
    if alert.try_number is not None:
        where += f", try {alert.try_number}"
    lines.append(where)
    if alert.error:
        error = alert.error.strip()
        if len(error) > MAX_ERROR_CHARS:
            error = error[: MAX_ERROR_CHARS - 1] + "…"
        lines.append(error)
    if alert.log_url:
        lines.append(f"log: {alert.log_url}")
    return "\n".join(lines)


def failure_payload(alert: FailureAlert) -> dict:
    return {"text": failure_text(alert), "candleflow": {"event": "task_failed", **asdict(alert)}}


def ban_payload(exchange: str, seconds: float, status: int, url: str) -> dict:
    """The alert for an exchange ban (sent by candleflow.ratelimit): `text` plus structured fields."""
    text = (f":octagonal_sign: candleflow: {exchange} banned this IP (HTTP {status}) for {seconds:.0f} s; "
            f"every collector of {exchange} stops until it ends, then resumes. Request: {url}")
    return {"text": text, "candleflow": {"event": "exchange_banned", "exchange": exchange, "status": status,
                                         "seconds": seconds, "url": url}}
