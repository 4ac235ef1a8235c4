"""AWS adapters: SNS for alerts, CloudWatch Embedded Metric Format for the Lambda's metrics."""
