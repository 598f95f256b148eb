"""What tests and benchmarks share: small networks with lively activations, and independent reference
implementations."""
