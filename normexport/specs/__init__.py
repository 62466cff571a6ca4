"""Registry entries, one module per norm family (each defines NormSpec constants)."""
