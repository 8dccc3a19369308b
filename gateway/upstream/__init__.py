"""Upstreams: node pickers, long-lived gRPC channels and pooled HTTP sessions."""
