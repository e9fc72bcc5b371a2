"""Kapa: Knative-grade serverless autoscaling for plain Kubernetes Deployments."""

__version__ = "0.1.0"
