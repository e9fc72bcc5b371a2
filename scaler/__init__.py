"""The scaler: Knative's KPA decision over Prometheus, served to KEDA as an external scaler."""
