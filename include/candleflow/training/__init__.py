"""Per-symbol model training under the SageMaker training-container contract.

- `dataset`: snapshot a symbol's candles (every exchange) into an S3 training channel.
- `model`: the features (no look-ahead) and the small LSTM that predicts next-candle direction.
- `entrypoint`: `python -m candleflow.training.entrypoint`, the container's training program.
- `runner`: runs a job spec locally exactly as SageMaker would (channels, checkpoints, model.tar.gz).
- `sagemaker`: job names, CreateTrainingJob requests and back, cost lines.

Only `entrypoint`/`model`/`runner` import torch; nothing here imports Airflow.
"""
