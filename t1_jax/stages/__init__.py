"""Training stages: each builds a TrainStage (init, loss or step, batches) for the one trainer."""
