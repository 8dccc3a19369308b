"""Generated protobuf and gRPC modules for protogate.plugin.v1 (see plugin_runner/codegen.py)."""
