"""SageMaker training operator that never starts a second paid job on an Airflow retry.

The provider's default (`action_if_job_exists="timestamp"`) submits a new, timestamped job when
the name exists — on a retry that is a duplicate bill for the same model. Here the job name is
deterministic per (run, symbol, timeframe) and every try follows
`candleflow.training.sagemaker.plan_submission` over the jobs earlier tries may have started
(`<name>`, `<name>-r2`, …):
- one still InProgress/Stopping is reattached to (deferred to the provider's trigger in
  deferrable mode, polled otherwise);
- a Completed one is returned as is;
- only when all of them Failed or were Stopped (or none exists) does the try start a job, under a
  name none of them has.
"""

from __future__ import annotations

from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTrainingOperator


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
        from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger

        from candleflow.training.sagemaker import plan_submission

        base = self.config["TrainingJobName"]
        try_number = getattr(context.get("ti"), "try_number", 1) or 1
        action, name, description = plan_submission(base, try_number, self._describe_or_none)
        if action == "reuse":
            self.log.info("Training job %s already completed; reusing it (try %s)", name, try_number)
            return self.serialize_result(name)
        if action == "reattach":
            self.log.info("Reattaching to training job %s (%s) instead of starting another (try %s)", name,
                          description.get("TrainingJobStatus"), try_number)
            if self.deferrable and self.wait_for_completion:
                self.defer(
                    trigger=SageMakerTrigger(job_name=name, job_type="Training", waiter_delay=self.check_interval,
                                             waiter_max_attempts=self.max_attempts, aws_conn_id=self.aws_conn_id,
                                             region_name=self.region_name, verify=self.verify,
                                             botocore_config=self.botocore_config),
                    method_name="execute_complete",
                )
            if self.wait_for_completion:
                self.hook.check_status(name, "TrainingJobStatus", self.hook.describe_training_job,
                                       self.check_interval, self.max_ingestion_time)
            return self.serialize_result(name)
        if name != base:
            self.log.warning("Earlier training job(s) of %s failed or were stopped; starting %s", base, name)
        self.config["TrainingJobName"] = name
        return super().execute(context)
