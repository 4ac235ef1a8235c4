"""Entry points: the CLI, the HTTP API, the worker and the AWS Lambda handler. Thin by design."""
