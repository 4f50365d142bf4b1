"""SageMaker training operator that never starts a second paid job on an Airflow retry.

The provider's default (`action_if_job_exists="timestamp"`) submits a new, timestamped job when
the name exists — on a retry that is a duplicate bill for the same model. Here the job name is
deterministic per (run, symbol, timeframe), and a retry:
- reattaches to that job while it is InProgress/Stopping, and waits for it;
- returns it as is when it already Completed;
- starts a fresh job named `<name>-r<try>` only when the earlier one Failed or was Stopped.
"""

from __future__ import annotations

from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTrainingOperator

REATTACH_STATES = {"InProgress", "Stopping"}
TERMINAL_FAILED = {"Failed", "Stopped"}


class ReattachingSageMakerTrainingOperator(SageMakerTrainingOperator):
    def __init__(self, **kwargs):
        kwargs.setdefault("check_if_job_exists", False)  # handled here, without "timestamp" renames
        super().__init__(**kwargs)

    def _describe_or_none(self, name: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.hook.describe_training_job(name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("ValidationException", "ResourceNotFound"):
                return None
            raise

    def execute(self, context) -> dict:
        name = self.config["TrainingJobName"]
        existing = self._describe_or_none(name)
        if existing is not None:
            status = existing.get("TrainingJobStatus")
            if status in REATTACH_STATES:
                self.log.info("Reattaching to training job %s (%s) instead of starting another", name, status)
                if self.wait_for_completion:
                    self.hook.check_status(name, "TrainingJobStatus", self.hook.describe_training_job,
                                           self.check_interval, self.max_ingestion_time)
                return {"Training": self.hook.describe_training_job(name)}
            if status == "Completed":
                self.log.info("Training job %s already completed; reusing it", name)
                return {"Training": existing}
            if status in TERMINAL_FAILED:
                try_number = getattr(context.get("ti"), "try_number", 1) or 1
                new_name = f"{name[:58]}-r{try_number}"
                self.log.warning("Training job %s ended %s; starting %s", name, status, new_name)
                self.config["TrainingJobName"] = new_name
        return super().execute(context)
