"""The plugin-runner SDK for external plugins (Python); the protocol lives in protos/protogate/plugin/v1."""
