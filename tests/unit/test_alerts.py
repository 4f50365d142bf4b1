from candleflow.alerts import MAX_ERROR_CHARS, FailureAlert, failure_payload, failure_text


def test_text_names_mapped_task_run_try_and_error():
    alert = FailureAlert(dag_id="ohlcv_ingest", task_id="pair.validate", run_id="manual__1", try_number=2,
                         map_index=7, error="QualityError: 3 rows with high < low")
    text = failure_text(alert)
    assert "pair.validate[7]" in text and "ohlcv_ingest" in text
    assert "run manual__1, try 2" in text
    assert "QualityError: 3 rows with high < low" in text


def test_unmapped_task_has_no_index_and_long_errors_are_cut():
    alert = FailureAlert(dag_id="d", task_id="t", run_id="r", map_index=-1, error="x" * 5000)
    text = failure_text(alert)
    assert "t[" not in text
    assert len(text) < MAX_ERROR_CHARS + 200 and text.endswith("…")


def test_payload_carries_structured_facts():
    payload = failure_payload(FailureAlert(dag_id="d", task_id="t", run_id="r"))
    assert payload["candleflow"]["event"] == "task_failed"
    assert payload["candleflow"]["dag_id"] == "d"
    assert payload["text"].startswith(":red_circle:")
